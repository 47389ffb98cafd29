//! The loader: PTX text to entries (comments, directives, braces, registers, labels).

use std::collections::HashMap;

use super::instr::decode_entry;
use super::*;

pub(super) fn strip_comments(src: &str) -> String {
    let mut out = String::with_capacity(src.len());
    for line in src.lines() {
        let l = match line.find("//") {
            Some(i) => &line[..i],
            None => line,
        };
        out.push_str(l);
        out.push('\n');
    }
    out
}

thread_local! {
    /// Newline offsets of the text being loaded (line numbers for reports without rescanning).
    static NEWLINES: std::cell::RefCell<Vec<usize>> = const { std::cell::RefCell::new(Vec::new()) };
}

pub(super) fn line_of(_text: &str, pos: usize) -> u32 {
    NEWLINES.with(|n| n.borrow().partition_point(|&p| p < pos)) as u32 + 1
}

/// Index of the `}` closing the `{` at `open`.
pub(super) fn matching_brace(t: &str, open: usize) -> Result<usize, String> {
    let mut depth = 0i32;
    for (i, c) in t[open..].char_indices() {
        match c {
            '{' => depth += 1,
            '}' => {
                depth -= 1;
                if depth == 0 {
                    return Ok(open + i);
                }
            }
            _ => {}
        }
    }
    Err(format!("line {}: unbalanced braces", line_of(t, open)))
}

/// Parses and decodes the whole PTX text.
pub fn load(src: &str) -> Result<Module, String> {
    let t = strip_comments(src);
    NEWLINES.with(|n| {
        *n.borrow_mut() = t
            .bytes()
            .enumerate()
            .filter(|&(_, b)| b == b'\n')
            .map(|(i, _)| i)
            .collect()
    });
    let mut pos = 0;
    let mut entries = HashMap::new();
    let mut funcs: HashMap<String, String> = HashMap::new();
    let mut pending: Vec<(String, String, usize, usize)> = Vec::new();
    let mut n_instrs = 0;
    while pos < t.len() {
        let rest = &t[pos..];
        let skip = rest.len() - rest.trim_start().len();
        pos += skip;
        if pos >= t.len() {
            break;
        }
        let rest = &t[pos..];
        let word_end = rest.find(|c: char| c.is_whitespace()).unwrap_or(rest.len());
        let word = &rest[..word_end];
        match word {
            ".version" | ".target" | ".address_size" => {
                let nl = rest.find('\n').unwrap_or(rest.len());
                let v = rest[word_end..nl].trim();
                let ok = match word {
                    ".version" => v == "8.0",
                    ".target" => v == "sm_90",
                    _ => v == "64",
                };
                if !ok {
                    return Err(format!(
                        "line {}: unsupported `{word} {v}`",
                        line_of(&t, pos)
                    ));
                }
                pos += nl;
            }
            ".extern" => {
                let semi = rest.find(';').ok_or("unterminated .extern")?;
                let decl: Vec<&str> = rest[..semi].split_whitespace().collect();
                if decl != [".extern", ".shared", ".align", "16", ".b8", "dyn_smem[]"] {
                    return Err(format!(
                        "line {}: unsupported declaration `{}`",
                        line_of(&t, pos),
                        decl.join(" ")
                    ));
                }
                pos += semi + 1;
            }
            ".func" | ".visible" => {
                let open = rest.find(['{', ';']).ok_or("unterminated function")?;
                let header = &rest[..open];
                let name = header
                    .split_whitespace()
                    .find(|w| !w.starts_with('.'))
                    .map(|w| w.split('(').next().unwrap_or(w).to_string())
                    .ok_or_else(|| format!("line {}: function without a name", line_of(&t, pos)))?;
                if rest.as_bytes()[open] == b';' {
                    // A declaration (`.func __unnamed_1 () .noreturn;`).
                    pos += open + 1;
                    continue;
                }
                let close = matching_brace(&t, pos + open)?;
                let body = t[pos + open + 1..close].to_string();
                if header.contains(".entry") {
                    pending.push((name, header.to_string(), pos + open + 1, close));
                } else if header.contains(".noreturn") {
                    funcs.insert(name, body);
                } else {
                    return Err(format!(
                        "line {}: unsupported function `{name}`",
                        line_of(&t, pos)
                    ));
                }
                pos = close + 1;
            }
            _ => {
                return Err(format!(
                    "line {}: unsupported top-level `{word}`",
                    line_of(&t, pos)
                ));
            }
        }
    }
    // Panic stubs: a `.noreturn` function whose body only calls other stubs, traps or exits.
    // It must reach a trap.
    let mut traps: HashMap<String, bool> = HashMap::new();
    for _ in 0..4 {
        for (name, body) in &funcs {
            let mut reaches = false;
            for stmt in body.split(';').map(clean_stmt) {
                let stmt = stmt.trim();
                if stmt.is_empty() || stmt == "exit" {
                    continue;
                }
                if stmt == "trap" {
                    reaches = true;
                } else if let Some(callee) = stmt.strip_prefix("call.uni") {
                    let callee = callee
                        .trim()
                        .trim_end_matches("()")
                        .trim()
                        .trim_end_matches(',');
                    reaches |= traps.get(callee).copied().unwrap_or(false);
                } else {
                    return Err(format!("function {name}: unsupported statement `{stmt}`"));
                }
            }
            traps.insert(name.clone(), reaches);
        }
    }
    for (name, header, start, end) in pending {
        let e = decode_entry(&t, &name, &header, start, end, &traps)?;
        n_instrs += e.code.len();
        entries.insert(name, e);
    }
    Ok(Module { entries, n_instrs })
}

/// Drops leading braces (callseq blocks) from a statement.
pub(super) fn clean_stmt(s: &str) -> &str {
    let mut s = s.trim();
    while let Some(r) = s.strip_prefix('{').or_else(|| s.strip_prefix('}')) {
        s = r.trim();
    }
    s
}

pub(super) struct Regs {
    /// prefix → (class, first index, count)
    pub(super) arrays: HashMap<String, (Class, u16, u16)>,
    /// Scalar names (`p` in a scoped block).
    pub(super) named: HashMap<String, (Class, u16)>,
    pub(super) next: u16,
}

impl Regs {
    pub(super) fn declare(&mut self, decl: &str) -> Result<(), String> {
        // `.reg .b32 %r<16>` or `.reg .pred p`
        let w: Vec<&str> = decl.split_whitespace().collect();
        if w.len() != 3 || w[0] != ".reg" {
            return Err(format!("unsupported register declaration `{decl}`"));
        }
        let class = match w[1] {
            ".pred" => Class::Pred,
            ".b16" => Class::B16,
            ".b32" => Class::B32,
            ".b64" => Class::B64,
            c => return Err(format!("unsupported register class `{c}`")),
        };
        if let Some((pre, n)) = w[2].split_once('<') {
            let n: u16 = n
                .trim_end_matches('>')
                .parse()
                .map_err(|_| format!("bad `{decl}`"))?;
            self.arrays.insert(pre.to_string(), (class, self.next, n));
            self.next = self.next.checked_add(n).ok_or("too many registers")?;
        } else {
            self.named.insert(w[2].to_string(), (class, self.next));
            self.next += 1;
        }
        Ok(())
    }

    pub(super) fn get(&self, name: &str) -> Option<(Class, Reg)> {
        if let Some(&r) = self.named.get(name) {
            return Some(r);
        }
        let digits = name.trim_start_matches(|c: char| !c.is_ascii_digit());
        let pre = &name[..name.len() - digits.len()];
        let i: u16 = digits.parse().ok()?;
        let &(c, base, n) = self.arrays.get(pre)?;
        (i < n).then_some((c, base + i))
    }
}

/// Splits operands at top-level commas (not inside `{}` or `[]`).
pub(super) fn split_operands(s: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut depth = 0;
    let mut cur = String::new();
    for c in s.chars() {
        match c {
            '{' | '[' | '(' => depth += 1,
            '}' | ']' | ')' => depth -= 1,
            _ => {}
        }
        if c == ',' && depth == 0 {
            out.push(cur.trim().to_string());
            cur.clear();
        } else {
            cur.push(c);
        }
    }
    if !cur.trim().is_empty() {
        out.push(cur.trim().to_string());
    }
    out
}

pub(super) fn parse_int(s: &str) -> Option<u64> {
    let (neg, s) = match s.strip_prefix('-') {
        Some(r) => (true, r),
        None => (false, s),
    };
    let v = if let Some(h) = s.strip_prefix("0x") {
        u64::from_str_radix(h, 16).ok()?
    } else {
        s.parse::<u64>().ok()?
    };
    Some(if neg { v.wrapping_neg() } else { v })
}
