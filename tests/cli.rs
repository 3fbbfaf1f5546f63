//! The binary as a user runs it: exit codes, error messages, table and JSON output.

use std::process::{Command, Output};

fn dsnn(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_dsnn-hpo"))
        .args(args)
        .output()
        .expect("run dsnn-hpo")
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn describe_prints_the_layer_table_and_totals() {
    let o = dsnn(&[
        "describe",
        "--model",
        "resnet20",
        "--shift-depth",
        "6",
        "--shift-type",
        "q",
        "--weight-bits",
        "5",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let text = String::from_utf8(o.stdout).unwrap();
    assert!(text.contains("the last 6 of 20 weight layers are shift layers"));
    assert!(text.contains("DeepShift-Q, 5-bit weights (shift -15..=0)"));
    let shift_rows = text
        .lines()
        .filter(|l| l.split_whitespace().nth(6) == Some("shift"))
        .count();
    assert_eq!(shift_rows, 6);
    assert!(text.contains("269,722"), "total parameters");
    // 6 shift layers: fc (640) + 5 convs of 64x64x3x3 at 8x8 (2,359,296 each).
    assert!(text.contains(&format!("{:>14}", "11,797,120")), "{text}");
}

#[test]
fn describe_shows_mobilenetv2_with_its_depthwise_convs_and_58_weight_layers() {
    let o = dsnn(&["describe", "--model", "mobilenetv2", "--shift-depth", "54"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let text = String::from_utf8(o.stdout).unwrap();
    assert!(text.contains("the last 54 of 58 weight layers are shift layers"));
    assert!(text.contains("2,296,922"), "total parameters");
    let depthwise: Vec<&str> = text.lines().filter(|l| l.contains("conv dw")).collect();
    assert_eq!(depthwise.len(), 17);
    // The first block's depthwise conv: one 3x3 filter per channel, float at depth 54.
    let first = depthwise[0].split_whitespace().collect::<Vec<_>>();
    assert_eq!(first[1], "layers.0.conv2");
    assert_eq!(first[4], "32x1x3x3");
    assert_eq!(first[7], "float");
}

#[test]
fn describe_shows_efficientnet_b0_with_its_squeeze_and_excitation_convs() {
    let o = dsnn(&["describe", "--model", "efficientnet-b0", "--json"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["model"], "efficientnet-b0");
    assert_eq!(v["totals"]["weight_layers"], 84);
    assert_eq!(v["totals"]["params"], 2_912_089);
    let se = v["layers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["name"] == "layers.0.fc1")
        .unwrap();
    assert_eq!(se["input"], serde_json::json!([16, 1, 1]));
    assert_eq!(
        (se["groups"].as_u64(), se["bias"].as_bool()),
        (Some(1), Some(true))
    );
}

#[test]
fn describe_shows_googlenet_with_its_pooling_rows() {
    let o = dsnn(&["describe", "--model", "googlenet", "--shift-depth", "23"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let text = String::from_utf8(o.stdout).unwrap();
    assert!(
        text.contains("the last 23 of 65 weight layers are shift layers"),
        "{text}"
    );
    assert!(text.contains("6,166,250"), "total parameters");
    let kind_rows = |kind: &str| {
        text.lines()
            .filter(|l| l.split_whitespace().nth(2) == Some(kind))
            .count()
    };
    assert_eq!(
        (
            kind_rows("conv"),
            kind_rows("maxpool"),
            kind_rows("avgpool")
        ),
        (64, 11, 1)
    );
    // The first stride-2 pool: 3x3 windows over 480x16x16 outputs.
    assert!(
        text.lines().any(|l| l.contains("maxpool1")
            && l.contains("3x3/2/1")
            && l.contains(&format!("{:>12}", "1,105,920"))),
        "{text}"
    );
    assert!(text.contains("pool ops/img"), "{text}");
}

#[test]
fn describe_shows_efficientnetv2_and_efficientnet_b0_with_silu() {
    let o = dsnn(&[
        "describe",
        "--model",
        "efficientnetv2-b0",
        "--shift-depth",
        "80",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let text = String::from_utf8(o.stdout).unwrap();
    assert!(text.contains("efficientnetv2-b0 on 3x32x32 inputs, 10 classes, silu activations"));
    assert!(
        text.contains("the last 80 of 170 weight layers are shift layers"),
        "{text}"
    );
    assert!(text.contains("37,837,202"), "total parameters");
    let silu_rows = text
        .lines()
        .filter(|l| l.split_whitespace().nth(2) == Some("silu"))
        .count();
    assert_eq!(silu_rows, 101);
    assert!(text.contains("SiLU ops/img"), "{text}");
    let b0 = dsnn(&[
        "describe",
        "--model",
        "efficientnet-b0",
        "--activation",
        "silu",
    ]);
    assert!(b0.status.success(), "{}", stderr(&b0));
    let text = String::from_utf8(b0.stdout).unwrap();
    assert!(text.contains("silu activations") && text.contains("2,912,089"));
    let bad = dsnn(&["describe", "--model", "resnet20", "--activation", "silu"]);
    assert_eq!(bad.status.code(), Some(2));
    assert!(
        stderr(&bad).contains("activation = \"silu\" does not apply to resnet20"),
        "{}",
        stderr(&bad)
    );
}

#[test]
fn describe_json_is_machine_readable() {
    let o = dsnn(&[
        "describe",
        "--model",
        "small-cnn",
        "--shift-depth",
        "2",
        "--input",
        "1x28x28",
        "--json",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["model"], "small-cnn");
    assert_eq!(v["totals"]["shift_layers"], 2);
    assert_eq!(v["totals"]["weight_layers"], 4);
    let layers = v["layers"].as_array().unwrap();
    let shifted: Vec<&str> = layers
        .iter()
        .filter(|l| l["shift"] == true)
        .map(|l| l["name"].as_str().unwrap())
        .collect();
    assert_eq!(shifted, ["fc1", "fc2"]);
    assert_eq!(v["shift_range"], serde_json::json!([-14, 0]));
}

#[test]
fn describe_rejects_bad_arguments_with_a_clear_message() {
    for (args, needle) in [
        (vec!["--model", "resnet21"], "unknown model 'resnet21'"),
        (
            vec!["--weight-bits", "9"],
            "--weight-bits 9: expected an integer in 2..=8",
        ),
        (
            vec!["--shift-depth", "-1"],
            "--shift-depth -1: expected a non-negative integer",
        ),
        (vec!["--shift-type", "z"], "unknown shift type 'z'"),
        (vec!["--input", "3x32"], "invalid input shape '3x32'"),
        (
            vec!["--model", "vgg19", "--input", "3x8x8"],
            "input 8x8 is too small for vgg19: it needs at least 16x16 pixels",
        ),
        (
            vec!["--activation-fraction-bits", "0"],
            "--activation-fraction-bits 0",
        ),
    ] {
        let mut all = vec!["describe"];
        all.extend(args.iter());
        let o = dsnn(&all);
        assert_eq!(o.status.code(), Some(2), "{all:?}");
        let e = stderr(&o);
        assert!(e.contains(needle), "{all:?}: {e}");
        assert!(!e.contains("panicked"), "{e}");
        assert!(o.stdout.is_empty(), "no half-written output for {all:?}");
    }
}

#[cfg(feature = "dsnn")]
fn write(dir: &std::path::Path, name: &str, text: &str) -> std::path::PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p
}

#[cfg(feature = "dsnn")]
const TINY: &str = r#"
epochs = 1
[data]
kind = "bundled"
limit_train = 400
validation_fraction = 0.25
[train]
model = "small-cnn"
shift_type = "q"
optimizer = "sgd"
lr = 0.05
batch_size = 50
"#;

#[cfg(feature = "dsnn")]
#[test]
fn train_reports_json_and_saves_a_continuable_state() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = write(dir.path(), "tiny.toml", TINY);
    let save = dir.path().join("state");
    let cfg_s = cfg.to_str().unwrap();
    let save_s = save.to_str().unwrap();
    let o = dsnn(&[
        "train",
        "--config",
        cfg_s,
        "--save",
        save_s,
        "--json",
        "--evaluate-test",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["report"]["status"], "completed");
    assert_eq!(v["report"]["epochs"], 1);
    let acc = v["report"]["valid_accuracy"].as_f64().unwrap();
    assert!((0.0..=1.0).contains(&acc));
    assert!(v["report"]["test_accuracy"].as_f64().is_some());
    // Every energy figure names its source.
    for c in ["cpu", "gpu", "ram"] {
        assert!(v["energy"][c]["source"].is_string(), "{c}");
    }
    let saved: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(save.join("report.json")).unwrap()).unwrap();
    assert_eq!(saved["report"], v["report"]);

    let o = dsnn(&[
        "train", "--config", cfg_s, "--resume", save_s, "--epochs", "2", "--json",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["report"]["start_epoch"], 1);
    assert_eq!(v["report"]["epochs"], 2);
}

#[cfg(feature = "dsnn")]
#[test]
fn bad_configs_name_the_file_key_and_expectation() {
    let dir = tempfile::tempdir().unwrap();
    for (name, text, sets, needle) in [
        (
            "unknown.toml",
            "epochs = 1\nepoch = 2\n",
            vec![],
            "unknown field `epoch`",
        ),
        ("type.toml", "[train]\nlr = \"fast\"\n", vec![], "line 2"),
        (
            "bits.toml",
            "[train]\nweight_bits = 9\n",
            vec![],
            "weight_bits = 9",
        ),
        (
            "data.toml",
            "[data]\nkind = \"cifar10\"\npath = \"/no/such/dir\"\n",
            vec![],
            "/no/such/dir",
        ),
        (
            "set.toml",
            "epochs = 1\n",
            vec!["--set", "train.momentum=2"],
            "momentum = 2",
        ),
        (
            "model.toml",
            "[train]\nmodel = \"vgg\"\n",
            vec![],
            "unknown variant `vgg`",
        ),
    ] {
        let cfg = write(dir.path(), name, text);
        let mut args = vec!["train", "--config", cfg.to_str().unwrap(), "--quiet"];
        args.extend(sets.iter());
        let o = dsnn(&args);
        assert_eq!(o.status.code(), Some(2), "{name}: {}", stderr(&o));
        let e = stderr(&o);
        assert!(e.contains(needle), "{name}: {e}");
        assert!(!e.contains("panicked"), "{name}: {e}");
    }
    let o = dsnn(&["train", "--config", "/no/such/config.toml"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("cannot read config /no/such/config.toml"));
}

#[cfg(feature = "dsnn")]
#[test]
fn a_diverging_run_fails_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = write(dir.path(), "tiny.toml", TINY);
    let o = dsnn(&[
        "train",
        "--config",
        cfg.to_str().unwrap(),
        "--quiet",
        "--set",
        "train.lr=1e12",
        "--set",
        "train.shift_depth=0",
    ]);
    assert_eq!(o.status.code(), Some(2));
    assert!(
        stderr(&o).contains("training diverged: training loss became"),
        "{}",
        stderr(&o)
    );
}

#[test]
fn energy_probe_lists_every_source() {
    let o = dsnn(&["energy", "--probe", "--json"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let text = String::from_utf8(o.stdout).unwrap();
    for s in ["nvml", "rapl", "estimate"] {
        assert!(text.contains(s), "{s} missing from {text}");
    }
}

#[cfg(feature = "dsnn")]
#[test]
fn energy_of_an_inference_pass_is_labelled() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = write(dir.path(), "tiny.toml", TINY);
    let o = dsnn(&["energy", "--config", cfg.to_str().unwrap(), "--json"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["images"], 100);
    assert_eq!(v["opcount"]["cpu"]["source"], "opcount");
    let cpu = v["measured"]["cpu"]["source"].as_str().unwrap();
    assert!(cpu == "rapl" || cpu == "estimate", "{cpu}");
    assert!(v["opcount_per_image_j"].as_f64().unwrap() > 0.0);
    // The pass is repeated: its statistics are in the record and the mean is what is reported.
    let rep = &v["measured"]["repeat"];
    let passes = rep["passes"].as_u64().unwrap();
    assert!((5..=10).contains(&passes), "{rep}");
    assert_eq!(rep["warmup_passes"], 1);
    let mean = rep["mean_j"].as_f64().unwrap();
    assert!(rep["min_j"].as_f64().unwrap() <= mean && mean <= rep["max_j"].as_f64().unwrap());
    // All passes together cost more than one.
    assert!(v["measured"]["energy_j"].as_f64().unwrap() > mean * passes as f64 * 0.99);
    let per_image = v["measured_per_image_j"].as_f64().unwrap();
    assert!(
        (per_image - mean / 100.0).abs() <= 1e-9 * mean,
        "{per_image} vs {mean}"
    );
    assert!(rep["target_met"].as_bool().unwrap() || rep["rel_ci95"].as_f64().unwrap() > 0.02);
}

#[cfg(feature = "dsnn")]
#[test]
fn energy_per_layer_of_a_trained_state_adds_up() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = write(dir.path(), "tiny.toml", TINY);
    let save = dir.path().join("state");
    let cfg_s = cfg.to_str().unwrap();
    let o = dsnn(&[
        "train",
        "--config",
        cfg_s,
        "--save",
        save.to_str().unwrap(),
        "--json",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let o = dsnn(&[
        "energy",
        "--config",
        cfg_s,
        "--state",
        save.to_str().unwrap(),
        "--per-layer",
        "--json",
        "--set",
        "energy.max_passes=3",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let rows = v["per_layer"].as_array().unwrap();
    // small-cnn: conv, bn, conv, bn, fc1, fc2 and the row for the work between them.
    let names: Vec<&str> = rows.iter().map(|r| r["name"].as_str().unwrap()).collect();
    assert_eq!(
        names,
        ["conv1", "bn1", "conv2", "bn2", "fc1", "fc2", "other"]
    );
    let sum = |k: &str| rows.iter().map(|r| r[k].as_f64().unwrap()).sum::<f64>();
    assert!((sum("time_share") - 1.0).abs() < 1e-9);
    let measured = v["measured_per_image_j"].as_f64().unwrap();
    assert!((sum("measured_j_per_image") - measured).abs() < 1e-9 * measured);
    let op = v["opcount_per_image_j"].as_f64().unwrap();
    assert!((sum("opcount_j_per_image") - op).abs() < 1e-9 * op);
    // Every layer of the table took some time; shift layers are the ones shift_depth says.
    assert!(rows.iter().all(|r| r["time_share"].as_f64().unwrap() > 0.0));
    assert!(
        rows.iter()
            .filter(|r| r["kind"] == "conv" || r["kind"] == "linear")
            .all(|r| r["shift"] == true)
    );
    assert!(
        rows.iter()
            .filter(|r| r["kind"] == "batchnorm")
            .all(|r| r["shift"] == false)
    );
    // The text form prints the table with its source.
    let o = dsnn(&[
        "energy",
        "--config",
        cfg_s,
        "--per-layer",
        "--set",
        "energy.max_passes=1",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(
        text.contains("measured J/img") && text.contains("conv1"),
        "{text}"
    );
    // A state saved for another configuration is refused with the directory named.
    let o = dsnn(&[
        "energy",
        "--config",
        cfg_s,
        "--state",
        save.to_str().unwrap(),
        "--set",
        "train.lr=0.5",
    ]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("state"), "{}", stderr(&o));
}

#[cfg(feature = "dsnn")]
#[test]
fn train_reads_an_image_folder_and_its_decode_cache() {
    let dir = tempfile::tempdir().unwrap();
    let images = dir.path().join("images");
    for (k, class) in ["cat", "dog"].iter().enumerate() {
        std::fs::create_dir_all(images.join(class)).unwrap();
        for i in 0..15u32 {
            let img = image::RgbImage::from_fn(12 + i % 3, 10, |x, y| {
                image::Rgb([(k * 200) as u8, (x * 20) as u8, (y * 20 + i) as u8])
            });
            img.save(images.join(class).join(format!("{i}.png")))
                .unwrap();
        }
    }
    let cfg = write(
        dir.path(),
        "img.toml",
        &format!(
            "epochs = 1\n[data]\nkind = \"image-folder\"\npath = {:?}\nimage_size = 16\n\
             cache = {:?}\nvalidation_fraction = 0.25\n[train]\nmodel = \"small-cnn\"\n\
             shift_type = \"q\"\nbatch_size = 8\n",
            images.to_str().unwrap(),
            dir.path().join("cache").to_str().unwrap()
        ),
    );
    let run = || {
        let o = dsnn(&["train", "--config", cfg.to_str().unwrap(), "--json"]);
        assert!(o.status.success(), "{}", stderr(&o));
        let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
        assert_eq!(v["report"]["status"], "completed");
        (
            stderr(&o),
            v["data"].as_str().unwrap_or_default().to_string(),
        )
    };
    let (first, data) = run();
    assert!(first.contains("decoded 30 images to 3x16x16"), "{first}");
    assert!(data.contains("3x16x16, 2 classes"), "{data}");
    let (second, _) = run();
    assert!(
        second.contains("read 30 decoded images from cache"),
        "{second}"
    );
}
