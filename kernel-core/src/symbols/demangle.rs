//! Demangling C++ and Rust symbol names, and glob matching over names.
//!
//! Rust's legacy mangling (`_ZN...17h0123456789abcdefE`) is also a valid
//! Itanium C++ name, so the order matters: a `_ZN` name whose last path
//! element is a Rust hash is demangled as Rust (without the hash), any other
//! `_Z` name as C++, and `_R` names as Rust v0.

use cpp_demangle::{DemangleOptions, Symbol as CppSymbol};

/// Returns the readable form of a mangled name, or `None` for a name that is
/// not mangled (such as a C function) or that fails to demangle.
///
/// C++ names are demangled without the return type that templates carry in
/// their mangling (`ns::f<int>(int)`, not `int ns::f<int>(int)`), so that a
/// person can type the name as it reads in the source.
pub fn demangle(raw: &str) -> Option<String> {
    if raw.starts_with("_R") || is_rust_legacy(raw) {
        let rust = rustc_demangle::try_demangle(raw).ok()?;
        // The alternate form leaves out the `::h0123...` hash.
        return Some(format!("{rust:#}"));
    }
    if raw.starts_with("_Z") {
        let symbol = CppSymbol::new(raw).ok()?;
        let options = DemangleOptions::new().no_return_type();
        return symbol.demangle(&options).ok();
    }
    None
}

/// True for a legacy Rust name: `_ZN`, path elements, and a last element
/// `h` followed by 16 hex digits, then `E` (possibly followed by a
/// `.llvm.NNN` style suffix).
fn is_rust_legacy(raw: &str) -> bool {
    let Some(mut rest) = raw.strip_prefix("_ZN") else {
        return false;
    };
    let mut last = "";
    loop {
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 {
            break;
        }
        let Ok(len) = rest[..digits].parse::<usize>() else {
            return false;
        };
        let Some(element) = rest.get(digits..digits + len) else {
            return false;
        };
        last = element;
        rest = &rest[digits + len..];
    }
    rest.starts_with('E')
        && last.len() == 17
        && last.starts_with('h')
        && last[1..].bytes().all(|b| b.is_ascii_hexdigit())
}

/// Removes the parameter list (and any qualifiers after it, such as
/// ` const`) from a demangled C++ name: `ns::Widget::frob(int) const`
/// becomes `ns::Widget::frob`. Names without a parameter list are returned
/// as they are.
pub fn strip_params(demangled: &str) -> &str {
    let Some(close) = demangled.rfind(')') else {
        return demangled;
    };
    // Walk back to the parenthesis that opens the parameter list.
    let mut depth = 0usize;
    for (index, byte) in demangled[..=close].bytes().enumerate().rev() {
        match byte {
            b')' => depth += 1,
            b'(' => {
                depth -= 1;
                if depth == 0 {
                    return demangled[..index].trim_end();
                }
            }
            _ => {}
        }
    }
    demangled
}

/// Shell-style glob match: `*` matches any run of characters (including
/// none), `?` matches exactly one character, everything else matches itself.
pub fn glob_match(pattern: &str, text: &str) -> bool {
    let pattern: Vec<char> = pattern.chars().collect();
    let text: Vec<char> = text.chars().collect();
    let (mut p, mut t) = (0, 0);
    // Where to resume after the last `*`: its pattern index and the text
    // index it has been stretched to so far.
    let mut star: Option<(usize, usize)> = None;
    while t < text.len() {
        match pattern.get(p) {
            Some('*') => {
                star = Some((p, t));
                p += 1;
            }
            Some('?') => {
                p += 1;
                t += 1;
            }
            Some(&c) if c == text[t] => {
                p += 1;
                t += 1;
            }
            _ => match star {
                Some((star_p, star_t)) => {
                    p = star_p + 1;
                    t = star_t + 1;
                    star = Some((star_p, star_t + 1));
                }
                None => return false,
            },
        }
    }
    pattern[p..].iter().all(|&c| c == '*')
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Demangles `raw` and compares with `expect` (`None` for "not mangled").
    fn check(raw: &str, expect: Option<&str>) {
        assert_eq!(demangle(raw).as_deref(), expect, "demangling {raw}");
    }

    #[test]
    fn names() {
        check("malloc", None);
        check("main", None);
        check("_ZN2ns6Widget4frobEi", Some("ns::Widget::frob(int)"));
        check("_ZNK2ns6Widget4sizeEv", Some("ns::Widget::size() const"));
        check("_Z3addii", Some("add(int, int)"));
        check("_ZN2ns1fIiEEvT_", Some("ns::f<int>(int)"));
        check(
            "_ZN12_GLOBAL__N_16helperEv",
            Some("(anonymous namespace)::helper()"),
        );
        check(
            "_ZN4core3fmt5write17h0123456789abcdefE",
            Some("core::fmt::write"),
        );
        check(
            "_ZN3std2rt10lang_start17h5d6e1e2b3c4d5e6fE.llvm.123",
            Some("std::rt::lang_start"),
        );
        check("_RNvCs1234_7mycrate4main", Some("mycrate::main"));
        check("_Zgarbage", None);
    }

    #[test]
    fn params_and_globs() {
        let strip = |s: &str, e: &str| assert_eq!(strip_params(s), e, "stripping {s}");
        strip("ns::Widget::frob(int)", "ns::Widget::frob");
        strip("ns::Widget::size() const", "ns::Widget::size");
        strip(
            "(anonymous namespace)::helper()",
            "(anonymous namespace)::helper",
        );
        strip("ns::Widget::operator()(int)", "ns::Widget::operator()");
        strip("f(void (*)(int))", "f");
        strip("malloc", "malloc");

        let glob = |p: &str, t: &str, e: bool| assert_eq!(glob_match(p, t), e, "{p} vs {t}");
        glob("mall*", "malloc", true);
        glob("mall*", "mallopt", true);
        glob("mall*", "calloc", false);
        glob("*alloc", "calloc", true);
        glob("*alloc", "allocate", false);
        glob("m?lloc", "malloc", true);
        glob("m?lloc", "mlloc", false);
        glob("*", "", true);
        glob("", "", true);
        glob("", "a", false);
        glob("ns::Widget::*", "ns::Widget::frob(int)", true);
        glob("*::frob*", "ns::Widget::frob(int)", true);
        glob("a*b*c", "aXbYbZc", true);
        glob("a*b*c", "aXbYbZ", false);
        glob("**x", "abx", true);
    }
}
