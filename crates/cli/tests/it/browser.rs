//! The shop's browser suite (web/e2e), run from here so that `cargo test` runs it: headless
//! Chromium driven by playwright-core against `oncely demo`, each test injecting the
//! failure it is about. Skipped (a failure in CI) without Node.js, `web/node_modules` or
//! Chromium. With `ONCELY_UI_SCREENSHOTS=DIR` it saves a screenshot of each state there
//! (docs/ui holds the committed ones).

use std::path::Path;
use std::process::Command;

#[test]
fn the_shop_in_a_real_browser() {
    let web = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../web");
    let chromium =
        std::env::var("ONCELY_CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".to_owned());
    let node = Command::new("node").arg("--version").output();
    let missing = if !node.is_ok_and(|o| o.status.success()) {
        Some("node is not installed".to_owned())
    } else if !web.join("node_modules/playwright-core").is_dir() {
        Some("web/node_modules is missing (cd web && npm ci)".to_owned())
    } else if !Path::new(&chromium).exists() {
        Some(format!(
            "{chromium} is missing (apt-get install -y chromium)"
        ))
    } else if !web.join("dist/index.html").exists() {
        Some("web/dist is missing (cd web && npm run build)".to_owned())
    } else {
        None
    };
    if let Some(why) = missing {
        oncely_testkit::services::skip("the shop's browser suite", &why);
        return;
    }
    let mut cmd = Command::new("node");
    cmd.current_dir(&web)
        .args(["e2e/run.mjs", "--bin", env!("CARGO_BIN_EXE_oncely")])
        .args(["--chromium", &chromium]);
    if let Ok(dir) = std::env::var("ONCELY_UI_SCREENSHOTS") {
        cmd.args(["--screenshots", &dir]);
    }
    let out = cmd.output().expect("run node");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    println!("{text}");
    assert!(out.status.success(), "the browser suite failed:\n{text}");
    assert!(text.contains("every browser test passed"), "{text}");
}
