//! The repository stands alone: no file of it links to or needs anything
//! outside it (such as a shared directory beside a checkout), and the
//! relative links of its Markdown files lead to files that exist.

use std::path::{Path, PathBuf};

/// The repository's own text files: Markdown, Rust, shell, TOML, the web
/// UI; not build output nor installed packages.
fn files(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let p = e.path();
        let name = e.file_name().to_string_lossy().into_owned();
        if p.is_dir() {
            if !["target", "node_modules", ".git"].contains(&name.as_str()) {
                files(&p, out);
            }
        } else if [
            ".md", ".rs", ".sh", ".toml", ".js", ".html", ".c", ".cc", ".h",
        ]
        .iter()
        .any(|x| name.ends_with(x))
        {
            out.push(p);
        }
    }
}

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

#[test]
fn nothing_points_outside_the_repository() {
    let mut all = Vec::new();
    files(&repo(), &mut all);
    assert!(
        all.len() > 50,
        "found the repository's files: {}",
        all.len()
    );
    // Built from pieces, so that this file does not name it itself.
    let outside = ["..", "/shared/"].concat();
    let design = ["DESIGN", ".md"].concat();
    let hits: Vec<String> = all
        .iter()
        .filter_map(|p| {
            let text = std::fs::read_to_string(p).ok()?;
            (text.contains(&outside) || text.contains(&design))
                .then(|| p.strip_prefix(repo()).unwrap_or(p).display().to_string())
        })
        .collect();
    assert!(hits.is_empty(), "files that point outside: {hits:?}");
}

#[test]
fn markdown_links_lead_to_files_of_the_repository() {
    let mut all = Vec::new();
    files(&repo(), &mut all);
    let mut broken = Vec::new();
    for md in all
        .iter()
        .filter(|p| p.extension().is_some_and(|x| x == "md"))
    {
        let text = std::fs::read_to_string(md).expect("read");
        // `](target)`: relative links only; web links and anchors aside.
        for part in text.split("](").skip(1) {
            let Some(end) = part.find(')') else { continue };
            let target = part[..end].split('#').next().unwrap_or("");
            if target.is_empty() || target.contains("://") || target.starts_with("mailto:") {
                continue;
            }
            let path = md.parent().expect("dir").join(target);
            let inside = std::fs::canonicalize(&path)
                .ok()
                .zip(std::fs::canonicalize(repo()).ok())
                .is_some_and(|(p, r)| p.starts_with(r));
            if !inside {
                broken.push(format!("{}: {target}", md.display()));
            }
        }
    }
    assert!(
        broken.is_empty(),
        "links to nothing in the repository: {broken:?}"
    );
}
