//! METEOR 1.5's `-norm` tokenizer for English (the jar's `Normalizer` with
//! punctuation kept), reimplemented rule by rule: Moses-style separation of
//! symbols, multi-dot escaping, comma splitting outside numbers, quote and dash
//! normalisation, dash removal between alphanumerics, English contraction
//! splitting, non-breaking prefixes, whitespace collapse. Java regex classes
//! are ASCII here (`\p{Digit}` = `[0-9]`, `\s` = `[ \t\n\x0B\f\r]`), as in Java.

use std::collections::HashMap;
use std::sync::OnceLock;

use regex::Regex;

const ALPHA: &str = "A-Za-zŠŽšžŸÀ-ÖØ-öø-ž";
const ALNUM: &str = "0-9A-Za-zŠŽšžŸÀ-ÖØ-öø-ž";

/// Kind of a non-breaking prefix (Moses `nonbreaking_prefix` lists).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Nbp {
    /// The dot never breaks (`Mr.`).
    Any,
    /// The dot does not break before a number (`No. 5`).
    NumericOnly,
}

/// Parse a Moses non-breaking prefix file: first token per line, `#` comments,
/// `#NUMERIC_ONLY#` as second token.
pub fn parse_nbp(text: &str) -> HashMap<String, Nbp> {
    let mut m = HashMap::new();
    for line in text.lines() {
        let mut tok = line
            .split([' ', '\t', '\n', '\r', '\x0c'])
            .filter(|t| !t.is_empty());
        let Some(pre) = tok.next() else { continue };
        if pre.starts_with('#') {
            continue;
        }
        let kind = if tok.next() == Some("#NUMERIC_ONLY#") {
            Nbp::NumericOnly
        } else {
            Nbp::Any
        };
        m.insert(pre.to_string(), kind);
    }
    m
}

struct Rules {
    sep_other: Regex,
    multi_dot: Regex,
    multi_dot2: Regex,
    comma: Regex,
    comma2: Regex,
    comma3: Regex,
    quote: Regex,
    quote2: Regex,
    rm_dash: Regex,
    cont1: Regex,
    cont2: Regex,
    cont3: Regex,
    cont4: Regex,
    cont5: Regex,
    nbp_alpha: Regex,
    spaces: Regex,
}

fn rules() -> &'static Rules {
    static R: OnceLock<Rules> = OnceLock::new();
    R.get_or_init(|| {
        let re = |s: &str| Regex::new(s).expect("valid METEOR normalizer regex");
        Rules {
            sep_other: re(&format!(r"([^{ALNUM}\t\n\x0B\x0C\r .'`,\-‘’])")),
            multi_dot: re(r"\.(\.+)"),
            multi_dot2: re(r"DOTMULTI\.([^.])"),
            comma: re(r"([^0-9]),([^0-9])"),
            comma2: re(r"([0-9]),([^0-9])"),
            comma3: re(r"([^0-9]),([0-9])"),
            quote: re("[`‘’]"),
            quote2: re("(?:[“”]|'')"),
            rm_dash: re(&format!(r"([{ALNUM}.])-([{ALNUM}])")),
            cont1: re(&format!(r"([^{ALPHA}])'([^{ALPHA}])")),
            cont2: re(&format!(r"([^{ALPHA}0-9])'([{ALPHA}])")),
            cont3: re(&format!(r"([{ALPHA}])'([^{ALPHA}])")),
            cont4: re(&format!(r"([{ALPHA}])'([{ALPHA}])")),
            cont5: re(r"([0-9])'(s)"),
            nbp_alpha: re(&format!("[{ALPHA}]")),
            spaces: re(" +"),
        }
    })
}

/// Java's `String.trim()`: strip code points <= U+0020 at both ends.
pub fn java_trim(s: &str) -> &str {
    s.trim_matches(|c: char| c <= ' ')
}

/// Java's `StringTokenizer` with default delimiters `" \t\n\r\f"`.
pub fn java_tokens(s: &str) -> impl Iterator<Item = &str> {
    s.split([' ', '\t', '\n', '\r', '\x0c'])
        .filter(|t| !t.is_empty())
}

/// Normalise one line as `Normalizer.normalizeLine(line, LANG_EN, true)`
/// (without the lowercasing, which the scorer applies afterwards).
pub fn normalize_line(line: &str, nbp: &HashMap<String, Nbp>) -> String {
    let r = rules();
    let mut w = format!(" {line} ");
    w = r.sep_other.replace_all(&w, " $1 ").into_owned();
    w = r.multi_dot.replace_all(&w, " DOTMULTI$1").into_owned();
    while w.contains("DOTMULTI.") {
        w = r.multi_dot2.replace_all(&w, "DOTDOTMULTI $1").into_owned();
        w = w.replace("DOTMULTI.", "DOTDOTMULTI");
    }
    w = r.comma.replace_all(&w, "$1 , $2").into_owned();
    w = r.comma2.replace_all(&w, "$1 , $2").into_owned();
    w = r.comma3.replace_all(&w, "$1 , $2").into_owned();
    w = r.quote.replace_all(&w, "'").into_owned();
    w = r.quote2.replace_all(&w, " \" ").into_owned();
    w = w.replace('–', "-");
    w = w.replace("--", "-");
    w = r.rm_dash.replace_all(&w, "$1 $2").into_owned();
    w = r.cont1.replace_all(&w, "$1 ' $2").into_owned();
    w = r.cont2.replace_all(&w, "$1 ' $2").into_owned();
    w = r.cont3.replace_all(&w, "$1 ' $2").into_owned();
    w = r.cont4.replace_all(&w, "$1 '$2").into_owned();
    w = r.cont5.replace_all(&w, "$1 '$2").into_owned();

    let words: Vec<&str> = java_tokens(&w).collect();
    let mut sb = String::with_capacity(w.len() + 8);
    for (i, word) in words.iter().enumerate() {
        let utf16_len = word.encode_utf16().count();
        if utf16_len > 1 && word.ends_with('.') {
            let pre = &word[..word.len() - 1];
            let kind = nbp.get(pre).copied();
            let next = words.get(i + 1);
            if pre.contains('.') && r.nbp_alpha.is_match(pre) {
                sb.push_str(&word.replace('.', ""));
            } else if kind == Some(Nbp::Any)
                || next.is_some_and(|n| n.starts_with(|c: char| c.is_ascii_lowercase()))
                || (kind == Some(Nbp::NumericOnly)
                    && next.is_some_and(|n| n.starts_with(|c: char| c.is_ascii_digit())))
            {
                // Non-breaking: always, before a lowercase word, or (numeric
                // only) before a number.
                sb.push_str(word);
            } else {
                sb.push_str(pre);
                sb.push_str(" .");
            }
        } else {
            sb.push_str(word);
        }
        sb.push(' ');
    }
    let mut w = sb;
    while w.contains("DOTDOTMULTI") {
        w = w.replace("DOTDOTMULTI", "DOTMULTI.");
    }
    w = w.replace("DOTMULTI", ".");
    let w = r.spaces.replace_all(&w, " ");
    java_trim(&w).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_the_jar_on_examples() {
        // Outputs of `java -cp meteor-1.5.jar edu.cmu.meteor.util.Normalizer en true`
        // with the jar's English prefix list; here only `Mr` is needed.
        let mut nbp = HashMap::new();
        nbp.insert("Mr".to_string(), Nbp::Any);
        assert_eq!(
            normalize_line(
                "The U.S.-based heart's size, 1,000 cm... Mr. Smith \"quoted\" it's 1990's!",
                &nbp
            ),
            "The US based heart 's size , 1,000 cm ... Mr. Smith \" quoted \" it 's 1990 's !"
        );
        assert_eq!(
            normalize_line("No acute cardiopulmonary abnormality.", &nbp),
            "No acute cardiopulmonary abnormality ."
        );
        assert_eq!(
            normalize_line("x-XXXX 2.5cm T-11", &nbp),
            "x XXXX 2.5cm T 11"
        );
    }
}
