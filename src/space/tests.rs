use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

use super::*;

const EXAMPLE: &str = r#"
[[space]]
name = "lr"
type = "float"
low = 0.001
high = 0.2
log = false
default = 0.1

[[space]]
name = "optimizer"
type = "categorical"
choices = ["sgd", "adam", "rmsprop"]
default = "sgd"

[[space]]
name = "momentum"
type = "float"
low = 0.0
high = 0.9
default = 0.9
active_if = { optimizer = ["sgd", "rmsprop"] }
"#;

fn example() -> SearchSpace {
    SearchSpace::from_toml_str(EXAMPLE, Some("space.toml")).unwrap()
}

fn err_of(toml_text: &str) -> SpaceError {
    SearchSpace::from_toml_str(toml_text, Some("bad.toml")).unwrap_err()
}

#[test]
fn example_parses_with_defaults_and_condition() {
    let space = example();
    assert_eq!(space.len(), 3);
    assert_eq!(
        space.params()[0].domain,
        Domain::Float {
            low: 0.001,
            high: 0.2,
            log: false,
            default: 0.1
        }
    );
    let d = space.default_config();
    assert_eq!(d.to_string(), "lr=0.1, optimizer=sgd, momentum=0.9");

    let mut adam = d.clone();
    adam.insert("optimizer", "adam");
    assert_eq!(
        space.validate(&adam),
        Err(ConfigError::Inactive("momentum".to_string()))
    );
    let adam: Config = [("lr", Value::Float(0.01)), ("optimizer", "adam".into())]
        .into_iter()
        .collect();
    assert_eq!(space.validate(&adam), Ok(()));
    let v = space.to_vector(&adam).unwrap();
    assert_eq!(v[1], 1.0);
    assert!(v[2].is_nan());
    assert_eq!(space.to_config(&v), adam);
}

#[test]
fn single_value_condition_and_int_parent() {
    let text = r#"
[[space]]
name = "layers"
type = "int"
low = 1
high = 3
[[space]]
name = "width3"
type = "int"
low = 8
high = 64
log = true
active_if = { layers = 3 }
"#;
    let space = SearchSpace::from_toml_str(text, None).unwrap();
    // Omitted defaults: middle of the range (integer division) and the geometric middle on a log scale.
    assert_eq!(space.default_config().to_string(), "layers=2");
    let mut c = Config::new();
    c.insert("layers", 3i64);
    c.insert("width3", 64i64);
    assert_eq!(space.validate(&c), Ok(()));
    match &space.params()[1].domain {
        Domain::Int { default, .. } => assert_eq!(*default, 23), // sqrt(8 * 64) = 22.6
        other => panic!("{other:?}"),
    }
}

#[test]
fn validation_errors_name_file_entry_and_problem() {
    let cases: &[(&str, &str)] = &[
        (
            "[[space]]\nname='a'\ntype='float'\nlow=2.0\nhigh=1.0",
            "bad.toml: [[space]] entry 1 (\"a\"): low (2) is greater than high (1); expected low <= high",
        ),
        (
            "[[space]]\nname='a'\ntype='float'\nlow=0.0\nhigh=1.0\nlog=true",
            "bad.toml: [[space]] entry 1 (\"a\"): log scale needs low > 0, got low = 0",
        ),
        (
            "[[space]]\nname='a'\ntype='int'\nlow=1\nhigh=4\ndefault=9",
            "bad.toml: [[space]] entry 1 (\"a\"): default 9 is outside [1, 4]",
        ),
        (
            "[[space]]\nname='a'\ntype='float'\nlow=0.0\nhigh=1.0\ndefault=1.5",
            "bad.toml: [[space]] entry 1 (\"a\"): default 1.5 is outside [0, 1]",
        ),
        (
            "[[space]]\nname='o'\ntype='categorical'\nchoices=['sgd','adam']\ndefault='ranger'",
            "bad.toml: [[space]] entry 1 (\"o\"): default \"ranger\" is not among the choices [\"sgd\", \"adam\"]",
        ),
        (
            "[[space]]\nname='o'\ntype='categorical'\nchoices=[]",
            "bad.toml: [[space]] entry 1 (\"o\"): choices must not be empty; list at least one string",
        ),
        (
            "[[space]]\nname='a'\ntype='float'\nlow=0.0\nhigh=1.0\n[[space]]\nname='a'\ntype='float'\nlow=0.0\nhigh=1.0",
            "bad.toml: [[space]] entry 2 (\"a\"): duplicate name \"a\", already declared by entry 1",
        ),
        (
            "[[space]]\nname='m'\ntype='float'\nlow=0.0\nhigh=1.0\nactive_if={ optimiser = ['sgd'] }",
            "bad.toml: [[space]] entry 1 (\"m\"): active_if refers to unknown parameter \"optimiser\"",
        ),
        (
            "[[space]]\nname='m'\ntype='float'\nlow=0.0\nhigh=1.0\nactive_if={ o = ['sgd'] }\n\
             [[space]]\nname='o'\ntype='categorical'\nchoices=['sgd']",
            "bad.toml: [[space]] entry 1 (\"m\"): active_if refers to \"o\", which is declared after this entry; declare parents first",
        ),
        (
            "[[space]]\nname='o'\ntype='categorical'\nchoices=['sgd']\n\
             [[space]]\nname='m'\ntype='float'\nlow=0.0\nhigh=1.0\nactive_if={ o = ['adam'] }",
            "bad.toml: [[space]] entry 2 (\"m\"): active_if value Str(\"adam\") for \"o\" is not a possible value of it (one of [\"sgd\"])",
        ),
        (
            "[[space]]\nname='a'\ntype='float'\nhigh=1.0",
            "bad.toml: [[space]] entry 1 (\"a\"): \"low\" is required for a float parameter",
        ),
        (
            "[[space]]\nname='a'\ntype='int'\nlow=0.5\nhigh=3",
            "bad.toml: [[space]] entry 1 (\"a\"): low must be an integer for an int parameter, got 0.5",
        ),
        (
            "x = 1",
            "bad.toml: expected an array of [[space]] tables under the key \"space\"",
        ),
    ];
    for (text, expected) in cases {
        assert_eq!(err_of(text).to_string(), *expected, "for {text}");
    }
}

#[test]
fn serde_errors_keep_the_entry() {
    let e = err_of("[[space]]\nname='a'\ntype='flaot'\nlow=0.0\nhigh=1.0");
    assert_eq!(e.location, "bad.toml: [[space]] entry 1 (\"a\")");
    assert!(e.to_string().contains("unknown variant `flaot`"), "{e}");
    let e = err_of("[[space]]\nname='a'\ntype='float'\nlow=0.0\nhigh=1.0\nlwo=3");
    assert!(e.to_string().contains("unknown field `lwo`"), "{e}");
    let e = err_of("[[space]]\nname='a'\ntype=");
    assert!(matches!(e.kind, SpaceErrorKind::Toml(_)), "{e}");
}

#[test]
fn unit_encoding_of_log_and_int_params() {
    let space = SearchSpace::new(
        vec![
            ParamSpec::float("lr", 0.001, 0.1, 0.01).log(),
            ParamSpec::int("bits", 2, 5, 5),
            ParamSpec::int("width", 1, 8, 1).log(),
        ],
        None,
    )
    .unwrap();
    let v = space.default_vector();
    // 0.01 is the geometric middle of [0.001, 0.1].
    assert!((v[0] - 0.5).abs() < 1e-12);
    // Four ints own cells of width 1/4; 5 is the centre of the last one.
    assert!((v[1] - 0.875).abs() < 1e-12);
    // Log ints span [ln 0.5, ln 8.5]: 1 sits at ln 2 / ln 17.
    assert!((v[2] - 2f64.ln() / 17f64.ln()).abs() < 1e-12);
    let mut top = v.clone();
    top[0] = 1.0;
    top[1] = 0.99;
    top[2] = 1.0;
    let c = space.to_config(&top);
    assert_eq!(c.f64("lr"), Some(0.1));
    assert_eq!(c.i64("bits"), Some(5));
    assert_eq!(c.i64("width"), Some(8));
}

#[test]
fn sampling_covers_values_evenly_and_respects_conditions() {
    let space = SearchSpace::new(
        vec![
            ParamSpec::categorical("opt", &["sgd", "adam"], "sgd"),
            ParamSpec::int("k", 1, 4, 1),
            ParamSpec::float("momentum", 0.0, 0.9, 0.9).active_if("opt", &["sgd".into()]),
        ],
        None,
    )
    .unwrap();
    let mut rng = ChaCha8Rng::seed_from_u64(7);
    let mut counts = [0usize; 4];
    let mut with_momentum = 0;
    for _ in 0..4000 {
        let c = space.sample(&mut rng);
        counts[(c.i64("k").unwrap() - 1) as usize] += 1;
        match c.str("opt").unwrap() {
            "sgd" => {
                with_momentum += 1;
                assert!((0.0..=0.9).contains(&c.f64("momentum").unwrap()));
            }
            _ => assert!(c.get("momentum").is_none()),
        }
    }
    for n in counts {
        assert!((900..1100).contains(&n), "{counts:?}");
    }
    assert!((1900..2100).contains(&with_momentum), "{with_momentum}");
}

#[test]
fn neighbours_change_one_parameter_and_follow_conditions() {
    let space = example();
    let mut rng = ChaCha8Rng::seed_from_u64(1);
    let v = space.default_vector();
    let ns = space.neighbours(&v, 4, &mut rng);
    // 4 for lr, 2 other optimizers, 4 for momentum.
    assert_eq!(ns.len(), 10);
    let mut adam = 0;
    for n in &ns {
        let changed: Vec<usize> = (0..3)
            .filter(|&j| SearchSpace::key(&n[j..=j]) != SearchSpace::key(&v[j..=j]))
            .collect();
        if n[1] == 1.0 {
            adam += 1;
            assert_eq!(changed, [1, 2]);
            assert!(n[2].is_nan());
        } else {
            assert_eq!(changed.len(), 1, "{n:?}");
        }
        assert!(n.iter().all(|x| x.is_nan() || (0.0..=2.0).contains(x)));
    }
    assert_eq!(adam, 1);
    // From adam, switching to rmsprop re-activates momentum at its default.
    let a = space
        .to_vector(
            &[("lr", Value::Float(0.1)), ("optimizer", "adam".into())]
                .into_iter()
                .collect(),
        )
        .unwrap();
    let back = space
        .neighbours(&a, 4, &mut rng)
        .into_iter()
        .find(|n| n[1] == 2.0)
        .unwrap();
    assert_eq!(space.to_config(&back).f64("momentum"), Some(0.9));
}

#[test]
fn to_vector_rejects_bad_configs() {
    let space = example();
    let mut c = space.default_config();
    c.insert("lr", 0.5);
    assert_eq!(
        space.validate(&c).unwrap_err().to_string(),
        "parameter \"lr\" = 0.5 is outside [0.001, 0.2]"
    );
    let mut c = space.default_config();
    c.insert("optimizer", "ranger");
    assert!(matches!(
        space.validate(&c),
        Err(ConfigError::NotAChoice { .. })
    ));
    let mut c = space.default_config();
    c.insert("batch", 3i64);
    assert_eq!(
        space.validate(&c),
        Err(ConfigError::Unknown("batch".into()))
    );
    let c: Config = [("lr", 0.1)].into_iter().collect();
    assert_eq!(
        space.validate(&c),
        Err(ConfigError::Missing("optimizer".into()))
    );
}

#[test]
fn serialises_back_to_toml_and_embeds_in_a_run_config() {
    #[derive(Deserialize, Serialize)]
    struct Run {
        seed: u64,
        space: SearchSpace,
    }
    let text = format!("seed = 3\n{EXAMPLE}");
    let run: Run = toml::from_str(&text).unwrap();
    assert_eq!(run.seed, 3);
    assert_eq!(run.space, example());
    let again = toml::to_string(&run).unwrap();
    let back: Run = toml::from_str(&again).unwrap();
    assert_eq!(back.space, run.space);

    let bad = "seed = 3\n[[space]]\nname = 'a'\ntype = 'float'\nlow = 1.0\nhigh = 0.0\n";
    let err = toml::from_str::<Run>(bad).err().unwrap().to_string();
    assert!(
        err.contains("[[space]] entry 1 (\"a\"): low (1) is greater than high (0)"),
        "{err}"
    );
}

#[test]
fn enumerate_counts_conditional_configurations() {
    let space = SearchSpace::new(
        vec![
            ParamSpec::categorical("opt", &["sgd", "adam"], "sgd"),
            ParamSpec::int("m", 0, 2, 0).active_if("opt", &["sgd".into()]),
        ],
        None,
    )
    .unwrap();
    let all = space.enumerate(100).unwrap();
    // sgd with m in {0, 1, 2}, and adam alone.
    assert_eq!(all.len(), 4);
    assert!(example().enumerate(100).is_none());
}
