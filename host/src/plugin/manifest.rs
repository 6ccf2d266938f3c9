//! A plugin's manifest: who it is and what it needs (docs/plugin-abi.md,
//! "The manifest"), from its `wprobe.manifest` custom section or given
//! with the upload.

use serde::{Deserialize, Serialize};

/// The custom section that carries the manifest.
pub const SECTION: &str = "wprobe.manifest";

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    pub name: String,
    pub version: String,
    pub abi: i32,
    #[serde(default)]
    pub needs: Needs,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Needs {
    #[serde(default)]
    pub data_dir: bool,
    #[serde(default)]
    pub mutation: bool,
}

impl Manifest {
    /// Parses and checks a manifest's JSON text.
    pub fn parse(text: &str) -> Result<Manifest, String> {
        let m: Manifest =
            serde_json::from_str(text).map_err(|e| format!("manifest is not valid: {e}"))?;
        m.check()?;
        Ok(m)
    }

    /// The manifest of a module that has none: its name, nothing needed.
    pub fn unnamed(name: &str) -> Manifest {
        Manifest {
            name: sanitize(name),
            version: "0".into(),
            abi: super::abi::ABI_VERSION,
            needs: Needs::default(),
        }
    }

    fn check(&self) -> Result<(), String> {
        let ok = |c: char| c.is_ascii_alphanumeric() || "_.-".contains(c);
        if self.name.is_empty() || self.name.len() > 64 || !self.name.chars().all(ok) {
            return Err(format!(
                "manifest name `{}` must be 1 to 64 of A-Z a-z 0-9 _ . -",
                self.name
            ));
        }
        if self.abi != super::abi::ABI_VERSION {
            return Err(format!(
                "manifest says ABI version {}; this host serves version {}",
                self.abi,
                super::abi::ABI_VERSION
            ));
        }
        Ok(())
    }
}

/// A file name made into a plugin name.
fn sanitize(name: &str) -> String {
    let stem = name.split('/').next_back().unwrap_or(name);
    let stem = stem.strip_suffix(".wasm").unwrap_or(stem);
    let s: String = stem
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "_.-".contains(c) {
                c
            } else {
                '_'
            }
        })
        .take(64)
        .collect();
    if s.is_empty() {
        "plugin".into()
    } else {
        s
    }
}

/// The contents of the custom section `name` of a binary wasm module, if
/// there is one (a text module has none).
pub fn custom_section<'a>(wasm: &'a [u8], name: &str) -> Option<&'a [u8]> {
    if wasm.len() < 8 || &wasm[..4] != b"\0asm" {
        return None;
    }
    let mut at = 8;
    while at < wasm.len() {
        let id = wasm[at];
        at += 1;
        let (size, n) = leb128(&wasm[at..])?;
        at += n;
        let end = at.checked_add(size as usize)?;
        let body = wasm.get(at..end)?;
        if id == 0 {
            let (len, n) = leb128(body)?;
            let section_name = body.get(n..n + len as usize)?;
            if section_name == name.as_bytes() {
                return body.get(n + len as usize..);
            }
        }
        at = end;
    }
    None
}

fn leb128(b: &[u8]) -> Option<(u32, usize)> {
    let mut v: u32 = 0;
    for (i, &byte) in b.iter().enumerate().take(5) {
        v |= u32::from(byte & 0x7f) << (7 * i);
        if byte & 0x80 == 0 {
            return Some((v, i + 1));
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_checks() {
        let m =
            Manifest::parse(r#"{"name":"lat","version":"1.0","abi":1,"needs":{"mutation":true}}"#)
                .unwrap();
        assert!(m.needs.mutation && !m.needs.data_dir);
        let e = Manifest::parse(r#"{"name":"a b","version":"1","abi":1}"#).unwrap_err();
        assert!(e.contains("`a b`"), "{e}");
        let e = Manifest::parse(r#"{"name":"a","version":"1","abi":2}"#).unwrap_err();
        assert!(e.contains("ABI version 2"), "{e}");
        let e = Manifest::parse(r#"{"name":"a","version":"1","abi":1,"x":1}"#).unwrap_err();
        assert!(e.contains("unknown field"), "{e}");
        assert_eq!(Manifest::unnamed("/p/count.c.wasm").name, "count.c");
    }

    #[test]
    fn finds_the_custom_section() {
        // magic, version, a custom section "wprobe.manifest" with "{}",
        // then an empty type section.
        let mut w = b"\0asm\x01\0\0\0".to_vec();
        let name = SECTION.as_bytes();
        w.push(0);
        w.push((1 + name.len() + 2) as u8);
        w.push(name.len() as u8);
        w.extend_from_slice(name);
        w.extend_from_slice(b"{}");
        w.extend_from_slice(&[1, 1, 0]);
        assert_eq!(custom_section(&w, SECTION), Some(&b"{}"[..]));
        assert_eq!(custom_section(&w, "other"), None);
        assert_eq!(custom_section(&w[..12], SECTION), None, "truncated");
        assert_eq!(custom_section(b"(module)", SECTION), None);
    }
}
