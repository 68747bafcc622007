//! How guessable a new passphrase is, by zxcvbn's estimate (Dropbox's
//! pattern-matching estimator: common passwords, names, dictionary words,
//! dates, keyboard walks, repeats, l33t). Advice only: the organization's
//! rules ([`crate::check_passphrase_rules`]) are what refuse.

use coffer_device::Passphrase;

/// zxcvbn's verdict on a passphrase. Holds nothing of the passphrase.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Strength {
    /// 0 (guessed in under 10³ tries) to 4 (over 10¹⁰).
    pub score: u8,
    /// About log10 of the guesses an attacker needs.
    pub guesses_log10: u32,
    /// What is wrong with it, when something is.
    pub warning: Option<String>,
    /// How to make it stronger.
    pub suggestions: Vec<String>,
}

impl Strength {
    /// Below 3: guessable by an offline attack on a stolen disk copy within
    /// a day at KDF speeds (docs/threat-model.md).
    pub fn is_weak(&self) -> bool {
        self.score < 3
    }
}

/// zxcvbn's estimate of `passphrase`, with `context` (the user's name, the
/// vault's) counted as known to an attacker.
pub fn strength(passphrase: &Passphrase, context: &[&str]) -> Strength {
    let entropy = zxcvbn::zxcvbn(passphrase.expose_secret(), context);
    let feedback = entropy.feedback();
    Strength {
        score: u8::from(entropy.score()),
        guesses_log10: entropy.guesses_log10().max(0.0) as u32,
        warning: feedback.and_then(|f| f.warning()).map(|w| w.to_string()),
        suggestions: feedback
            .map(|f| f.suggestions().iter().map(ToString::to_string).collect())
            .unwrap_or_default(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn of(text: &str) -> Strength {
        strength(&Passphrase::new(text.into()).unwrap(), &["alice"])
    }

    #[test]
    fn common_and_personal_passphrases_are_weak() {
        assert!(of("password1").is_weak());
        assert!(of("alice2024").is_weak(), "{:?}", of("alice2024"));
        assert!(of("qwertyuiop").is_weak());
        let strong = of("correct horse battery staple of the field team");
        assert!(!strong.is_weak(), "{strong:?}");
        assert!(of("password1").warning.is_some());
    }
}
