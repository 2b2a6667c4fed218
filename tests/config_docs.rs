//! The configuration reference in docs/configuration.md is the generated table, and every setting is listed
//! where the README documents settings.

use codellama_lsp::config::Config;

fn repo_file(name: &str) -> Option<String> {
    std::fs::read_to_string(std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(name)).ok()
}

#[test]
fn docs_configuration_md_holds_the_generated_table() {
    let doc = repo_file("docs/configuration.md").expect("docs/configuration.md exists");
    let table = Config::markdown_table();
    assert!(
        doc.contains(&table),
        "docs/configuration.md is out of date: replace its table with the output of `codellama-lsp config --markdown`"
    );
}

#[test]
fn the_binary_prints_the_same_table() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_codellama-lsp"))
        .args(["config", "--markdown"])
        .output()
        .unwrap();
    assert!(out.status.success());
    assert_eq!(
        String::from_utf8(out.stdout).unwrap(),
        Config::markdown_table()
    );
}

#[test]
fn the_readme_holds_the_generated_table() {
    let readme = repo_file("README.md").expect("README.md exists");
    assert!(
        readme.contains(&Config::markdown_table()),
        "README.md's configuration table is out of date: replace it with the output of `codellama-lsp config --markdown`"
    );
    for key in Config::KEYS {
        assert!(
            readme.contains(&format!("`{key}`")),
            "README.md does not name `{key}`"
        );
    }
}
