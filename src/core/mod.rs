//! The sans-IO core: conference state, stream selection, rewriting, and
//! the life of a relay link.
//!
//! No sockets, no clock reads, no async. Every input carries `now`; every
//! effect comes out as a value. The media edge (`crate::edge`) and the
//! federation shell (`crate::federation`, for [`link`]) are the callers,
//! and the unit and simulation tests drive it the same way.

pub mod allocation;
pub mod bitrate;
pub mod conference;
pub mod ids;
pub mod keyframe;
pub mod link;
pub mod messages;
pub mod pacing;
pub mod probing;
pub mod relay_demand;
pub mod rewrite;
pub mod roster_policy;
pub mod selection;
pub mod speakers;

#[cfg(test)]
mod tests;
