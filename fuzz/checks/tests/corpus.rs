//! Replays the kept fuzz corpus through each target's checks: seconds, no
//! fuzzing, so that a regression of anything a fuzz run once found fails CI.

use std::path::Path;

#[test]
fn every_kept_input_passes_its_targets_checks() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../corpus");
    for (target, check) in fuzz_checks::TARGETS {
        let dir = root.join(target);
        let mut replayed = 0;
        for entry in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
            let path = entry.unwrap().path();
            let data = std::fs::read(&path).unwrap();
            let outcome = std::panic::catch_unwind(|| check(&data));
            assert!(outcome.is_ok(), "{target}: {} fails its checks", path.display());
            replayed += 1;
        }
        assert!(replayed >= 5, "{target}: the corpus holds its seeds, found {replayed}");
        println!("{target}: {replayed} inputs replayed");
    }
}
