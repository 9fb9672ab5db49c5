//! Replays every fuzz target's committed corpus (`fuzz/corpus/TARGET/*`) through its harness
//! on stable, so that inputs that once crashed stay fixed without a nightly toolchain; then
//! feeds each harness a few thousand inputs from a fixed-seed generator, mutations of the
//! corpus included.

use std::path::Path;

use vmm_reference::fuzzing::TARGETS;

/// xorshift64*: deterministic, so a failure here reproduces.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
}

fn corpus(target: &str) -> Vec<Vec<u8>> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/corpus")
        .join(target);
    let mut inputs: Vec<Vec<u8>> = std::fs::read_dir(&dir)
        .map(|entries| {
            entries
                .filter_map(|e| e.ok())
                .filter_map(|e| std::fs::read(e.path()).ok())
                .collect()
        })
        .unwrap_or_default();
    inputs.sort();
    inputs
}

#[test]
fn every_corpus_input_runs_through_its_harness() {
    for (name, harness) in TARGETS {
        let inputs = corpus(name);
        assert!(!inputs.is_empty(), "fuzz/corpus/{name} has no seeds");
        for input in &inputs {
            harness(input);
        }
    }
}

#[test]
fn mutated_and_random_inputs_do_not_panic() {
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    for (name, harness) in TARGETS {
        let seeds = corpus(name);
        let rounds = if *name == "kernel_image" { 300 } else { 2000 };
        for i in 0..rounds {
            let mut input = if !seeds.is_empty() && i % 2 == 0 {
                seeds[(rng.next() as usize) % seeds.len()].clone()
            } else {
                let len = (rng.next() % 4096) as usize;
                (0..len).map(|_| rng.next() as u8).collect()
            };
            for _ in 0..(rng.next() % 16) {
                if input.is_empty() {
                    break;
                }
                let at = (rng.next() as usize) % input.len();
                input[at] = rng.next() as u8;
            }
            harness(&input);
        }
    }
}
