//! What the end-to-end tests share: where the bootstrap binary is, and the part of a report
//! page every host renders alike.

use std::path::PathBuf;

/// The bootstrap binary: `TRIPFLOW_BOOTSTRAP`, else the one cargo builds for this crate's
/// integration tests next to their own directory (target/<profile>/).
pub fn bootstrap() -> PathBuf {
    let path = std::env::var_os("TRIPFLOW_BOOTSTRAP")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            let exe = std::env::current_exe().unwrap();
            exe.parent()
                .unwrap()
                .parent()
                .unwrap()
                .join("tripflow-lambda")
        });
    assert!(
        path.exists(),
        "{} is missing: run `cargo build -p tripflow-lambda` or set TRIPFLOW_BOOTSTRAP",
        path.display()
    );
    path
}

/// A page without what only its host knows: the accounting section and the provenance's host
/// and input rows (the replay's files; the function's table and object).
pub fn shared_part(page: &str) -> String {
    let start = page
        .find("<section id=\"accounting\">")
        .expect("accounting section");
    let end = start + page[start..].find("</section>\n").unwrap() + "</section>\n".len();
    let page = format!("{}{}", &page[..start], &page[end..]);
    page.lines()
        .filter(|l| {
            !l.starts_with("<tr><td class=\"l\">rendered by<")
                && !l.starts_with("<tr><td class=\"l\">input<")
        })
        .collect::<Vec<_>>()
        .join("\n")
}
