//! Converts `openapi.yaml` to JSON at build time: parsing the 40 KB of YAML took ≈ 4 ms of
//! every cold start (docs/ARCHITECTURE.md §Budgets: init ≤ 1.5× hello-world), for bytes that never change.

fn main() {
    let spec = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../openapi.yaml");
    println!("cargo::rerun-if-changed={}", spec.display());
    let yaml = std::fs::read_to_string(&spec).expect("read openapi.yaml");
    let value: serde_json::Value = serde_yaml::from_str(&yaml).expect("openapi.yaml parses");
    let out = std::path::PathBuf::from(std::env::var_os("OUT_DIR").expect("OUT_DIR"));
    std::fs::write(
        out.join("openapi.json"),
        serde_json::to_string(&value).expect("JSON"),
    )
    .expect("write openapi.json");
}
