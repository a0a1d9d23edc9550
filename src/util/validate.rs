//! Numeric options checked where they are parsed (clap `value_parser`s), so that a value out of
//! range is refused with the option's name before any work starts, never turned into a NaN loss,
//! a negative weight or a silent no-op later.

fn parse_f64(s: &str) -> Result<f64, String> {
    s.trim()
        .parse::<f64>()
        .map_err(|_| format!("'{s}' is not a number"))
}

/// A finite number > 0 (learning rates, α of Eq. 1 / 13).
pub fn positive_finite(s: &str) -> Result<f64, String> {
    let x = parse_f64(s)?;
    if x.is_finite() && x > 0.0 {
        Ok(x)
    } else {
        Err(format!("{s} must be a finite number > 0"))
    }
}

/// A finite number ≥ 0 (λ of Eq. 11, sampling temperatures).
pub fn non_negative_finite(s: &str) -> Result<f64, String> {
    let x = parse_f64(s)?;
    if x.is_finite() && x >= 0.0 {
        Ok(x)
    } else {
        Err(format!("{s} must be a finite number >= 0"))
    }
}

/// A dropout probability in [0, 1).
pub fn dropout(s: &str) -> Result<f32, String> {
    let x = parse_f64(s)?;
    if (0.0..1.0).contains(&x) {
        Ok(x as f32)
    } else {
        Err(format!("{s} must lie in [0, 1)"))
    }
}

/// A count ≥ 1 (epochs, steps, ranks, batch sizes).
pub fn at_least_one(s: &str) -> Result<usize, String> {
    match s.trim().parse::<usize>() {
        Ok(n) if n >= 1 => Ok(n),
        Ok(_) => Err(format!("{s} must be at least 1")),
        Err(_) => Err(format!("'{s}' is not a whole number")),
    }
}

/// The most new tokens one generation may ask for; a larger request is almost surely a typo
/// (and the model's context bounds it anyway, checked where the model is known).
pub const MAX_NEW_TOKENS_LIMIT: usize = 8192;

/// `--max-new-tokens`: 1 ..= [`MAX_NEW_TOKENS_LIMIT`].
pub fn max_new_tokens(s: &str) -> Result<usize, String> {
    let n = at_least_one(s)?;
    if n <= MAX_NEW_TOKENS_LIMIT {
        Ok(n)
    } else {
        Err(format!(
            "{n} is more than {MAX_NEW_TOKENS_LIMIT} new tokens; generation stops at the model's \
             context anyway"
        ))
    }
}

fn bounded(s: &str, max: usize, what: &str) -> Result<usize, String> {
    let n = at_least_one(s)?;
    if n <= max {
        Ok(n)
    } else {
        Err(format!(
            "{n} is more than the largest {what} hdpo plans for ({max})"
        ))
    }
}

/// A sequence length for memory estimates: 1 ..= 2^20 tokens (keeps the estimate's
/// arithmetic far from overflow).
pub fn seq_len(s: &str) -> Result<usize, String> {
    bounded(s, 1 << 20, "sequence length")
}

/// A batch size for memory estimates: 1 ..= 4096.
pub fn batch(s: &str) -> Result<usize, String> {
    bounded(s, 4096, "batch")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_out_of_range_are_refused() {
        assert_eq!(positive_finite("0.001"), Ok(0.001));
        for bad in ["NaN", "inf", "0", "-1", "x"] {
            assert!(positive_finite(bad).is_err(), "{bad}");
        }
        assert_eq!(non_negative_finite("0"), Ok(0.0));
        assert!(non_negative_finite("-10").is_err());
        assert!(non_negative_finite("NaN").is_err());
        assert_eq!(dropout("0.1"), Ok(0.1));
        assert!(dropout("1").is_err() && dropout("1.5").is_err() && dropout("-0.1").is_err());
        assert_eq!(at_least_one("3"), Ok(3));
        assert!(at_least_one("0").is_err());
        assert!(max_new_tokens("100000").is_err());
        assert_eq!(max_new_tokens("64"), Ok(64));
        assert!(seq_len("4294967296").is_err());
        assert_eq!(batch("4"), Ok(4));
    }
}
