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
