//! The federated pair of `config/examples/` from scratch, as an operator
//! follows it: `sft certs dev` as the files' header says, both SFTs started
//! from the files verbatim (their fixed ports on 127.0.0.1 and 127.0.0.2),
//! and a call across the two with no loss once it runs.
#![allow(clippy::disallowed_methods)] // tests read the real clock to bound their waits

mod common;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::fed::on;
use common::process::SftProcess;
use common::{wait_for, Peer};

/// `sft certs dev` in `dir`, as the example's header spells it.
fn certs_dev(dir: &Path, args: &str) {
    let output = Command::new(env!("CARGO_BIN_EXE_sft"))
        .args(["certs", "dev"])
        .args(args.split_whitespace())
        .current_dir(dir)
        .output()
        .expect("sft certs dev runs");
    assert!(output.status.success(), "sft certs dev {args}: {}", String::from_utf8_lossy(&output.stderr));
    assert!(String::from_utf8_lossy(&output.stdout).starts_with("[federation]"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_federated_pair_example_carries_a_call_from_scratch() {
    let dir = std::env::temp_dir().join(format!("sft-examples-{}", rand::random::<u32>()));
    std::fs::create_dir_all(&dir).unwrap();
    let examples = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/examples");
    for file in ["a.toml", "b.toml"] {
        std::fs::copy(examples.join(file), dir.join(file)).unwrap();
    }
    certs_dev(&dir, "--domain a.example --out certs/a");
    certs_dev(&dir, "--domain b.example --out certs/b --ca certs/a");

    let a = SftProcess::start_from_file(&dir.join("a.toml"), &dir).await;
    let b = SftProcess::start_from_file(&dir.join("b.toml"), &dir).await;
    let alice = Peer::join(&a, on("a.example", "demo", "alice", 1)).await;
    let bob = Peer::join(&b, on("b.example", "demo", "bob", 2)).await;
    wait_for("alice and bob see each other", || alice.participants().len() == 2 && bob.participants().len() == 2).await;
    wait_for("each hears the other", || alice.heard(2) > 20 && bob.heard(1) > 20).await;

    // Steady state: three seconds of audio each way, every packet in order.
    let at_alice = alice.slot_mid_of("bob", "audio").expect("bob's audio in one of alice's slots");
    let at_bob = bob.slot_mid_of("alice", "audio").expect("alice's audio in one of bob's slots");
    let before = (alice.slot_stats(&at_alice), bob.slot_stats(&at_bob));
    tokio::time::sleep(Duration::from_secs(3)).await;
    let after = (alice.slot_stats(&at_alice), bob.slot_stats(&at_bob));
    for (who, start, end) in [("alice", &before.0, &after.0), ("bob", &before.1, &after.1)] {
        assert!(end.packets - start.packets >= 120, "{who} got {} packets in 3 s", end.packets - start.packets);
        assert_eq!(end.seq_jumps, start.seq_jumps, "{who} lost or reordered audio: {:?}", end.jumps);
    }
    assert_eq!(b.metric("sft_federation_links{peer_domain=\"a.example\",state=\"up\"}").await, 1.0);
    drop((alice, bob, a, b));
    std::fs::remove_dir_all(&dir).unwrap();
}
