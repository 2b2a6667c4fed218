//! `codellama-lsp eval` end to end: the real binary with the real Qwen2.5-Coder-0.5B-Instruct on the shared
//! HumanEval files, scoring by running Python. The model is small, so these tests check the report's shape
//! and that every answer was scored, never particular scores; with `LLAMA_SERVER` set, the same run also
//! drives llama.cpp's `/infill` and prints both engines' figures.

mod common;

use serde_json::Value;

fn eval(args: &[&str]) -> (String, String) {
    let model = common::qwen_model().display().to_string();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_codellama-lsp"))
        .arg("eval")
        .args(["--model", &model, "--threads", "2"])
        .args(args)
        .output()
        .unwrap();
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    );
    assert!(out.status.success(), "eval {args:?} failed: {stderr}");
    (stdout, stderr)
}

fn share(v: &Value) -> f64 {
    let x = v.as_f64().unwrap_or_else(|| panic!("{v} is not a share"));
    assert!((0.0..=1.0).contains(&x), "{x}");
    x
}

#[test]
fn infilling_is_scored_by_exact_match_and_execution() {
    let (stdout, _) = eval(&[
        "--dataset",
        "single-line,random-span-light",
        "--limit",
        "2",
        "--no-llama",
        "--token-healing",
        "false",
        "--json",
        "--verbose",
    ]);
    let v: Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(v["template"], "qwen");
    assert_eq!(v["token_healing"], false);
    assert_eq!(v["context_window"], 2048);
    assert_eq!(v["max_tokens"], 128);
    let datasets = v["datasets"].as_array().unwrap();
    assert_eq!(datasets.len(), 2);
    for d in datasets {
        let engines = d["engines"].as_array().unwrap();
        assert_eq!(engines.len(), 1, "{d}");
        let e = &engines[0];
        assert_eq!(e["engine"], "codellama-lsp");
        assert_eq!(e["cases"], 2);
        share(&e["exact_match"]);
        share(&e["pass_at_1"]);
        assert!(e["mean_ms"].as_f64().unwrap() > 0.0);
        for r in e["results"].as_array().unwrap() {
            assert!(r["exact"].is_boolean() && r["passed"].is_boolean(), "{r}");
        }
    }
}

#[test]
fn generate_is_scored_by_execution() {
    let (stdout, _) = eval(&["--task", "generate", "--limit", "1", "--json", "--verbose"]);
    let v: Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(v["max_tokens"], 512);
    assert_eq!(v["llama_server"], Value::Null);
    let e = &v["datasets"][0]["engines"][0];
    assert_eq!(e["engine"], "codellama-lsp generate");
    assert_eq!(e["exact_match"], Value::Null);
    share(&e["pass_at_1"]);
    let r = &e["results"][0];
    assert_eq!(r["task_id"], "Python/0");
    assert!(r["passed"].is_boolean(), "{r}");
    // The generated code is a function, or the error says why there is none.
    let code = r["completion"].as_str().unwrap();
    assert!(code.contains("def ") || r["error"].is_string(), "{r}");
}

#[test]
fn both_engines_in_one_run_with_llama_server() {
    let Some(server) = std::env::var_os("LLAMA_SERVER") else {
        eprintln!("SKIPPED: set LLAMA_SERVER to a llama-server binary to compare with llama.cpp's /infill");
        return;
    };
    let server = std::path::PathBuf::from(server);
    let (stdout, _) = eval(&[
        "--limit",
        "2",
        "--llama-server",
        &server.display().to_string(),
    ]);
    assert!(
        stdout.contains(&format!("llama.cpp: {}", server.display())),
        "{stdout}"
    );
    // Our pipeline heals the token before the cursor unless told not to.
    assert!(!stdout.contains("no token healing"), "{stdout}");
    let rows: Vec<&str> = stdout
        .lines()
        .filter(|l| l.starts_with("single-line"))
        .collect();
    assert_eq!(rows.len(), 2, "{stdout}");
    assert!(rows[0].contains("codellama-lsp") && rows[1].contains("llama.cpp /infill"));
    for row in rows {
        // problems, exact and pass@1 as percentages, no similarity, then the time per problem.
        let cols: Vec<&str> = row.split_whitespace().collect();
        assert_eq!(cols[1], "2", "{row}");
        let n = cols.len();
        assert!(
            cols[n - 4].ends_with('%') && cols[n - 3].ends_with('%') && cols[n - 2] == "-",
            "{row}"
        );
        assert!(cols[n - 1].parse::<f64>().unwrap() > 0.0, "{row}");
    }
}

/// Cross-file holes from this checkout's own `src`, answered with and without other files in the prompt:
/// one row per budget, scored by exact match and edit similarity (no tests to run).
#[test]
fn crossfile_holes_are_answered_under_each_context_budget() {
    let src = concat!(env!("CARGO_MANIFEST_DIR"), "/src");
    let (stdout, _) = eval(&[
        "--task",
        "crossfile",
        "--dataset",
        src,
        "--limit",
        "2",
        "--context-budgets",
        "0,512",
        "--json",
        "--verbose",
    ]);
    let v: Value = serde_json::from_str(&stdout).unwrap();
    let engines = v["datasets"][0]["engines"].as_array().unwrap();
    let names: Vec<&str> = engines
        .iter()
        .map(|e| e["engine"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["context_tokens=0", "context_tokens=512"]);
    for e in engines {
        assert_eq!(e["cases"], 2, "{e}");
        let similarity = e["similarity"].as_f64().unwrap();
        assert!((0.0..=1.0).contains(&similarity), "{e}");
        assert!(e["pass_at_1"].is_null(), "{e}");
        let results = e["results"].as_array().unwrap();
        assert!(results
            .iter()
            .all(|r| r["task_id"].as_str().unwrap().starts_with("src/")));
    }
}
