//! Which source goes into which receive slot, and at which simulcast layer.
//!
//! Pure functions over small slices, called by the conference whenever the
//! inputs of a choice change (join, leave, REQSTREAMS, a speaker tick).

use super::ids::Layer;

/// Fills `slots` with `desired`, keeping every source that already sits in
/// a slot where it is, so a reordering of speakers causes no switches.
///
/// `desired` must hold no more entries than there are slots and no duplicates.
pub fn assign_stable<K: Copy + Eq>(current: &[Option<K>], desired: &[K]) -> Vec<Option<K>> {
    let mut next: Vec<Option<K>> = current.iter().map(|slot| slot.filter(|source| desired.contains(source))).collect();
    let mut free = (0..next.len()).filter(|&i| next[i].is_none()).collect::<Vec<_>>().into_iter();
    for source in desired {
        if !next.contains(&Some(*source)) {
            if let Some(i) = free.next() {
                next[i] = Some(*source);
            }
        }
    }
    next
}

/// The layer to send when `wanted` is asked for and `available` are being
/// received (ascending): the best one not above the wish, else the lowest
/// one above it. Used while the receiver has no bandwidth estimate; with one,
/// [`super::allocation`] chooses.
pub fn choose_layer(wanted: Layer, available: &[Layer]) -> Option<Layer> {
    available
        .iter()
        .rev()
        .find(|&&layer| layer <= wanted)
        .or_else(|| available.iter().find(|&&layer| layer > wanted))
        .copied()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stable_assignment_keeps_sources_in_place() {
        let current = [Some(1), Some(2), Some(3)];
        assert_eq!(assign_stable(&current, &[3, 1, 2]), vec![Some(1), Some(2), Some(3)]);
    }

    #[test]
    fn stable_assignment_replaces_only_what_left() {
        let current = [Some(1), Some(2), Some(3)];
        assert_eq!(assign_stable(&current, &[4, 1, 3]), vec![Some(1), Some(4), Some(3)]);
        assert_eq!(assign_stable(&current, &[3]), vec![None, None, Some(3)]);
    }

    #[test]
    fn stable_assignment_fills_empty_slots_in_order() {
        assert_eq!(assign_stable::<u8>(&[None, None, None], &[7, 8]), vec![Some(7), Some(8), None]);
        assert_eq!(assign_stable::<u8>(&[], &[]), Vec::<Option<u8>>::new());
    }

    #[test]
    fn layer_choice_prefers_at_or_below_the_wish() {
        use Layer::*;
        assert_eq!(choose_layer(High, &[Low, Medium, High]), Some(High));
        assert_eq!(choose_layer(Medium, &[Low, Medium, High]), Some(Medium));
        assert_eq!(choose_layer(Medium, &[Low, High]), Some(Low));
        assert_eq!(choose_layer(Low, &[Medium, High]), Some(Medium));
        assert_eq!(choose_layer(High, &[]), None);
    }
}
