//! `hdpo init-model`: a tiny LLaVA whose tokenizer covers the dataset's text,
//! loadable by the model loader, deterministic for a seed, and refusing to
//! overwrite a model folder.

use std::path::Path;
use std::process::Command;

use hdpo::model::{LlavaModel, LoadOptions, TextTokenizer};

fn hdpo(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_hdpo"))
        .args(args)
        .output()
        .expect("running hdpo")
}

fn ok(args: &[&str]) {
    let o = hdpo(args);
    assert!(
        o.status.success(),
        "hdpo {args:?} failed: {}",
        String::from_utf8_lossy(&o.stderr)
    );
}

#[test]
fn init_model_covers_the_dataset_text_and_loads() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("phantom");
    let s = |p: &Path| p.to_str().unwrap().to_string();
    ok(&[
        "phantom",
        "--out",
        &s(&data),
        "--train",
        "24",
        "--test",
        "6",
        "--size",
        "64",
    ]);
    let cfg = tmp.path().join("tiny.toml");
    std::fs::write(
        &cfg,
        "text_hidden = 32\ntext_layers = 1\nintermediate = 64\n",
    )
    .unwrap();
    let m1 = tmp.path().join("m1");
    let m2 = tmp.path().join("m2");
    for m in [&m1, &m2] {
        ok(&[
            "init-model",
            "--tokenizer-from",
            &s(&data),
            "--format",
            "phantom",
            "--config",
            &s(&cfg),
            "--seed",
            "7",
            "--out",
            &s(m),
        ]);
    }
    // Same seed, same bytes.
    assert_eq!(
        std::fs::read(m1.join("model.safetensors")).unwrap(),
        std::fs::read(m2.join("model.safetensors")).unwrap()
    );
    // The config's sizes were applied and the model loads with its tokenizer.
    let model = LlavaModel::load(&m1, &LoadOptions::default()).unwrap();
    assert_eq!(model.config.text.hidden_size, 32);
    assert_eq!(model.config.text.num_hidden_layers, 1);
    let tok = TextTokenizer::from_dir(&m1, &model.config).unwrap();
    // Every word of every training answer is in the vocabulary (no <unk> = 0).
    let train = hdpo::data::load(
        hdpo::data::DatasetFormat::Phantom,
        &data,
        &hdpo::data::LoadOptions {
            split: Some(hdpo::data::Split::Train),
            ..Default::default()
        },
    )
    .unwrap()
    .samples;
    assert!(!train.is_empty());
    for smp in &train {
        let ids = tok.encode(&smp.answer, false).unwrap();
        assert!(!ids.is_empty(), "{}: empty encoding", smp.id);
        assert!(
            !ids.contains(&0),
            "{}: {:?} has unknown words: {ids:?}",
            smp.id,
            smp.answer
        );
    }
    // A folder that holds a model is not overwritten.
    let o = hdpo(&[
        "init-model",
        "--tokenizer-from",
        &s(&data),
        "--out",
        &s(&m1),
    ]);
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("already holds a model"));
}
