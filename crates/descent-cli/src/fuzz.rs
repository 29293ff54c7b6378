//! Property tests of the readers of what users and killed runs leave on disk: TOML configs, run
//! folders' metric files and configs, sweep trial records. Mutated and truncated versions of valid
//! inputs give an error or a result, never a panic.

use proptest::prelude::*;

use crate::train::TrainArgs;

/// A valid input and ways to break it: truncation, a byte changed, a span repeated or deleted.
fn mutations(valid: &'static str) -> impl Strategy<Value = String> {
    let n = valid.len();
    prop_oneof![
        (0..=n).prop_map(move |k| String::from_utf8_lossy(&valid.as_bytes()[..k]).into_owned()),
        (0..n, any::<u8>()).prop_map(move |(i, b)| {
            let mut v = valid.as_bytes().to_vec();
            v[i] = b;
            String::from_utf8_lossy(&v).into_owned()
        }),
        (0..n, 0..n).prop_map(move |(i, j)| {
            let (a, b) = (i.min(j), i.max(j));
            let v = valid.as_bytes();
            String::from_utf8_lossy(&[&v[..b], &v[a..]].concat()).into_owned()
        }),
        (0..n, 0..n).prop_map(move |(i, j)| {
            let (a, b) = (i.min(j), i.max(j));
            let v = valid.as_bytes();
            String::from_utf8_lossy(&[&v[..a], &v[b..]].concat()).into_owned()
        }),
        // Numbers swapped for extreme or ill-typed ones.
        prop::sample::select(vec!["-1", "1e400", "18446744073709551616", "nan", "\"x\"", "[]", "{}", "true", "-0"])
            .prop_map(move |tok| {
                let mut out = String::new();
                let mut in_num = false;
                for ch in valid.chars() {
                    let digit = ch.is_ascii_digit() || ch == '.' || ch == 'e';
                    if digit && !in_num {
                        out.push_str(tok);
                    }
                    if !digit {
                        out.push(ch);
                    }
                    in_num = digit;
                }
                out
            }),
    ]
}

const TOML: &str = "model = \"mlp\"\noptimizer = \"adamw\"\nlr = 0.001\nepochs = 2\nsteps = 50\nbatch_size = 64\n\
dropout = 0.1\nclip_norm = 1.0\nthreads = 2\nhparams = { weight_decay = 0.01, betas = [0.9, 0.99] }\n\
groups = [[\"bias\", { weight_decay = 0.0 }]]\nschedule = \"torch.StepLR\"\nschedule_args = { step_size = 2 }\n";

const STEPS: &str = "{\"step\":1,\"epoch\":1,\"loss\":2.3,\"lr\":0.001,\"grad_norm\":1.5}\n\
{\"step\":2,\"epoch\":1,\"loss\":2.1,\"lr\":0.001,\"grad_norm\":1.25}\n";

const METRICS: &str = "{\"epoch\":1,\"steps\":2,\"train_loss\":2.2,\"test_loss\":2.0,\"test_accuracy\":0.31,\
\"seconds\":0.5,\"samples_per_s\":128.0,\"lr\":0.001}\n";

const CONFIG: &str = "{\"model\": \"mlp\", \"optimizer\": \"adam\", \"lr\": 0.001, \"hparams\": {}, \"epochs\": 1, \
\"steps\": null, \"batch_size\": 32, \"seed\": 0, \"init\": \"torch\", \"dropout\": 0.2, \"normalize\": false, \
\"data\": \"data/mnist\", \"threads\": null, \"clip_norm\": null, \"clip_value\": null, \"l1\": 0.0, \"l2\": 0.0, \
\"patience\": null, \"min_delta\": 0.0, \"target_accuracy\": null, \"min_loss_change\": null, \"groups\": [], \
\"schedule\": \"constant\", \"schedule_args\": {}, \"schedule_interval\": \"step\", \"validation\": 0, \"tensorboard\": false}";

/// A case's folder under the temp dir, removed when the case is done with it.
struct Dir(std::path::PathBuf);

impl std::ops::Deref for Dir {
    type Target = std::path::Path;
    fn deref(&self) -> &std::path::Path {
        &self.0
    }
}

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn dir(tag: &str) -> Dir {
    let d = std::env::temp_dir().join(format!("descent-fuzz-{tag}-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    Dir(d)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn toml_configs_give_settings_or_an_error(text in mutations(TOML)) {
        use clap::Args;
        let matches = TrainArgs::augment_args(clap::Command::new("t")).get_matches_from(["t"]);
        if let Ok(table) = toml::from_str::<toml::Table>(&text) {
            let base = TrainArgs::from_flags(&[]).unwrap();
            if let Ok(a) = base.merge_table(table, std::path::Path::new("c.toml"), &matches, &[]) {
                let _ = crate::train::check_numbers(&a);
            }
        }
    }

    #[test]
    fn metric_files_give_rows_or_an_error(steps in mutations(STEPS), metrics in mutations(METRICS), config in mutations(CONFIG)) {
        let d = dir("metrics");
        std::fs::write(d.join("steps.jsonl"), steps).unwrap();
        std::fs::write(d.join("metrics.jsonl"), metrics).unwrap();
        std::fs::write(d.join("config.json"), config).unwrap();
        let _ = crate::runs::read_run(&d);
    }

    #[test]
    fn resume_cuts_any_metric_file_to_whole_lines(steps in mutations(STEPS)) {
        let d = dir("retain");
        let p = d.join("steps.jsonl");
        std::fs::write(&p, &steps).unwrap();
        if let Some(kept) = crate::folder::kept_lines(&p, |l| serde_json::from_str::<serde_json::Value>(l).is_ok()).unwrap() {
            crate::folder::write_atomic(&p, kept.as_bytes()).unwrap();
        }
        let kept = std::fs::read_to_string(&p).unwrap_or_default();
        prop_assert!(kept.is_empty() || kept.ends_with('\n'));
        for l in kept.lines() {
            prop_assert!(serde_json::from_str::<serde_json::Value>(l).is_ok());
        }
    }
}
