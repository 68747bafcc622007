//! Slot key-derivation functions: parameters, caps and calibration.
//!
//! A passphrase slot stores its KDF and parameters. They are chosen when the
//! slot is made, by [`KdfParams::calibrate`], so that one derivation takes
//! about the target time on this machine and never less than the OWASP
//! Password Storage Cheat Sheet minimum
//! (<https://cheatsheetseries.owasp.org/cheatsheets/Password_Storage_Cheat_Sheet.html>).
//! When a header is opened, every slot's parameters are checked against
//! [`KdfLimits`] first, so a crafted header cannot make coffer allocate
//! gigabytes or spin for an hour. docs/formats/vault-header.md fixes the
//! numbers.

use std::time::{Duration, Instant};

use zeroize::Zeroize;

use crate::error::{Error, Result};
use crate::secret::{Key256, SlotKek, KEY_LEN};

/// Length of every slot salt, in bytes.
pub const SALT_LEN: usize = 32;

/// The memory Argon2id calibration grows to before it adds passes instead.
/// Phones and small field devices must still open the vault.
pub const CALIBRATION_MAX_ARGON2_MEMORY_KIB: u32 = 256 * 1024;

/// The largest scrypt N calibration writes (2^18 × r = 8 × 128 B = 256 MiB).
pub const CALIBRATION_MAX_SCRYPT_LOG_N: u8 = 18;

/// A slot's key-derivation function and its work factors.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum KdfParams {
    /// Argon2id (RFC 9106), version 0x13. The default.
    Argon2id {
        /// Memory in KiB.
        memory_kib: u32,
        /// Number of passes.
        iterations: u32,
        /// Lanes.
        parallelism: u32,
    },
    /// PBKDF2-HMAC-SHA256 (RFC 8018), for FIPS-minded settings.
    Pbkdf2Sha256 {
        /// Iteration count.
        iterations: u32,
    },
    /// scrypt (RFC 7914).
    Scrypt {
        /// log2 of the CPU/memory cost N.
        log_n: u8,
        /// Block size r.
        r: u32,
        /// Parallelism p.
        p: u32,
    },
}

/// Which KDF a passphrase slot uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum KdfAlgorithm {
    /// Argon2id: memory-hard, the default and the recommended choice.
    Argon2id,
    /// PBKDF2-HMAC-SHA256: not memory-hard; for compliance settings only.
    Pbkdf2Sha256,
    /// scrypt: memory-hard.
    Scrypt,
}

impl KdfAlgorithm {
    /// The name used in the CLI, JSON output and docs.
    pub fn name(self) -> &'static str {
        match self {
            KdfAlgorithm::Argon2id => "argon2id",
            KdfAlgorithm::Pbkdf2Sha256 => "pbkdf2-sha256",
            KdfAlgorithm::Scrypt => "scrypt",
        }
    }
}

impl std::str::FromStr for KdfAlgorithm {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "argon2id" => Ok(KdfAlgorithm::Argon2id),
            "pbkdf2-sha256" | "pbkdf2" => Ok(KdfAlgorithm::Pbkdf2Sha256),
            "scrypt" => Ok(KdfAlgorithm::Scrypt),
            _ => Err(Error::InvalidKdfParams(
                "unknown KDF (expected argon2id, pbkdf2-sha256 or scrypt)",
            )),
        }
    }
}

/// The most KDF work a slot may ask for when a vault is opened.
///
/// The defaults sit well above what calibration ever writes (about 4 to 10
/// times the work of a 1 s calibration on a current x86 core) and bound the
/// memory a header can make coffer allocate to 1 GiB.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct KdfLimits {
    /// Largest Argon2id memory, KiB.
    pub argon2_max_memory_kib: u32,
    /// Most Argon2id passes.
    pub argon2_max_iterations: u32,
    /// Most Argon2id lanes.
    pub argon2_max_parallelism: u32,
    /// Largest Argon2id memory × passes, KiB.
    pub argon2_max_work_kib: u64,
    /// Most PBKDF2 iterations.
    pub pbkdf2_max_iterations: u32,
    /// Largest scrypt log2(N).
    pub scrypt_max_log_n: u8,
    /// Largest scrypt memory (128 · r · (N + p): the scrypt crate allocates
    /// both the N-block table and the p-lane buffer), bytes.
    pub scrypt_max_memory: u64,
    /// Most scrypt lanes p.
    pub scrypt_max_parallelism: u32,
    /// Largest scrypt work N · r · p.
    pub scrypt_max_work: u64,
    /// Largest sum, over all passphrase slots of a header, of each slot's
    /// work as a fraction of its algorithm's work cap. Unlocking may run
    /// every passphrase slot, so this bounds the whole attempt, not one slot.
    pub max_total_work: f64,
}

impl Default for KdfLimits {
    fn default() -> Self {
        KdfLimits {
            argon2_max_memory_kib: 1024 * 1024,
            argon2_max_iterations: 64,
            argon2_max_parallelism: 16,
            argon2_max_work_kib: 4 * 1024 * 1024,
            pbkdf2_max_iterations: 10_000_000,
            scrypt_max_log_n: 20,
            scrypt_max_memory: 1 << 30,
            scrypt_max_parallelism: 16,
            scrypt_max_work: 1 << 24,
            max_total_work: 8.0,
        }
    }
}

/// A slot asked for more KDF work than [`KdfLimits`] allows.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("key slot {slot} asks for {what} = {value}, above this coffer's cap of {limit}")]
pub struct KdfLimitError {
    /// Index of the offending slot in the header.
    pub slot: usize,
    /// Which parameter is too large.
    pub what: &'static str,
    /// The value in the header.
    pub value: u64,
    /// The cap.
    pub limit: u64,
}

impl KdfParams {
    /// The OWASP minimum for `algorithm`: the floor calibration starts from.
    ///
    /// Argon2id m = 19 MiB, t = 2, p = 1; PBKDF2-HMAC-SHA256 600,000
    /// iterations; scrypt N = 2^17, r = 8, p = 1.
    pub const fn recommended_minimum(algorithm: KdfAlgorithm) -> Self {
        match algorithm {
            KdfAlgorithm::Argon2id => KdfParams::Argon2id {
                memory_kib: 19 * 1024,
                iterations: 2,
                parallelism: 1,
            },
            KdfAlgorithm::Pbkdf2Sha256 => KdfParams::Pbkdf2Sha256 {
                iterations: 600_000,
            },
            KdfAlgorithm::Scrypt => KdfParams::Scrypt {
                log_n: 17,
                r: 8,
                p: 1,
            },
        }
    }

    /// The algorithm of these parameters.
    pub fn algorithm(&self) -> KdfAlgorithm {
        match self {
            KdfParams::Argon2id { .. } => KdfAlgorithm::Argon2id,
            KdfParams::Pbkdf2Sha256 { .. } => KdfAlgorithm::Pbkdf2Sha256,
            KdfParams::Scrypt { .. } => KdfAlgorithm::Scrypt,
        }
    }

    /// Whether every work factor is at least the OWASP minimum.
    pub fn meets_recommended_minimum(&self) -> bool {
        let min = KdfParams::recommended_minimum(self.algorithm());
        match (*self, min) {
            (
                KdfParams::Argon2id {
                    memory_kib,
                    iterations,
                    ..
                },
                KdfParams::Argon2id {
                    memory_kib: min_m,
                    iterations: min_t,
                    ..
                },
            ) => memory_kib >= min_m && iterations >= min_t,
            (
                KdfParams::Pbkdf2Sha256 { iterations },
                KdfParams::Pbkdf2Sha256 { iterations: min },
            ) => iterations >= min,
            (KdfParams::Scrypt { log_n, r, p }, KdfParams::Scrypt { .. }) => {
                // Compare memory (128·r·N) and work (N·r·p) with N=2^17, r=8, p=1.
                let n = 1u64.checked_shl(log_n.into()).unwrap_or(u64::MAX);
                let nr = n.saturating_mul(r.into());
                nr >= (1 << 17) * 8 && nr.saturating_mul(p.into()) >= (1 << 17) * 8
            }
            _ => false,
        }
    }

    /// Checks that the parameters are ones the KDF accepts at all.
    pub fn validate(&self) -> Result<()> {
        match *self {
            KdfParams::Argon2id {
                memory_kib,
                iterations,
                parallelism,
            } => {
                argon2::Params::new(memory_kib, iterations, parallelism, Some(KEY_LEN))
                    .map_err(|_| Error::InvalidKdfParams("Argon2id parameters out of range"))?;
            }
            KdfParams::Pbkdf2Sha256 { iterations } => {
                if iterations == 0 {
                    return Err(Error::InvalidKdfParams(
                        "PBKDF2 needs at least one iteration",
                    ));
                }
            }
            KdfParams::Scrypt { log_n, r, p } => {
                if log_n == 0 {
                    return Err(Error::InvalidKdfParams("scrypt needs N of at least 2"));
                }
                scrypt::Params::new(log_n, r, p, KEY_LEN)
                    .map_err(|_| Error::InvalidKdfParams("scrypt parameters out of range"))?;
            }
        }
        Ok(())
    }

    /// Checks the parameters against the caps for opening (`slot` is only
    /// used in the error).
    pub fn check_limits(&self, limits: &KdfLimits, slot: usize) -> Result<(), KdfLimitError> {
        let over = |what, value: u64, limit: u64| {
            if value > limit {
                Err(KdfLimitError {
                    slot,
                    what,
                    value,
                    limit,
                })
            } else {
                Ok(())
            }
        };
        match *self {
            KdfParams::Argon2id {
                memory_kib,
                iterations,
                parallelism,
            } => {
                over(
                    "Argon2id memory (KiB)",
                    memory_kib.into(),
                    limits.argon2_max_memory_kib.into(),
                )?;
                over(
                    "Argon2id passes",
                    iterations.into(),
                    limits.argon2_max_iterations.into(),
                )?;
                over(
                    "Argon2id lanes",
                    parallelism.into(),
                    limits.argon2_max_parallelism.into(),
                )?;
                over(
                    "Argon2id memory × passes (KiB)",
                    u64::from(memory_kib) * u64::from(iterations),
                    limits.argon2_max_work_kib,
                )
            }
            KdfParams::Pbkdf2Sha256 { iterations } => over(
                "PBKDF2 iterations",
                iterations.into(),
                limits.pbkdf2_max_iterations.into(),
            ),
            KdfParams::Scrypt { log_n, r, p } => {
                over(
                    "scrypt log2(N)",
                    log_n.into(),
                    limits.scrypt_max_log_n.into(),
                )?;
                over(
                    "scrypt lanes p",
                    p.into(),
                    limits.scrypt_max_parallelism.into(),
                )?;
                // log_n is at most the cap here; clamp the shift anyway so that
                // a caller's larger cap cannot overflow it.
                let n = 1u64.checked_shl(log_n.into()).unwrap_or(u64::MAX);
                let memory = n
                    .saturating_add(p.into())
                    .saturating_mul(128)
                    .saturating_mul(r.into());
                over("scrypt memory (bytes)", memory, limits.scrypt_max_memory)?;
                over(
                    "scrypt N·r·p",
                    n.saturating_mul(r.into()).saturating_mul(p.into()),
                    limits.scrypt_max_work,
                )
            }
        }
    }

    /// This slot's work as a fraction of its algorithm's work cap in
    /// `limits` (1.0 = at the cap). Summed over a header's slots and held to
    /// [`KdfLimits::max_total_work`].
    pub fn work_fraction(&self, limits: &KdfLimits) -> f64 {
        let ratio = |work: u64, cap: u64| work as f64 / cap.max(1) as f64;
        match *self {
            KdfParams::Argon2id {
                memory_kib,
                iterations,
                ..
            } => ratio(
                u64::from(memory_kib) * u64::from(iterations),
                limits.argon2_max_work_kib,
            ),
            KdfParams::Pbkdf2Sha256 { iterations } => {
                ratio(iterations.into(), limits.pbkdf2_max_iterations.into())
            }
            KdfParams::Scrypt { log_n, r, p } => {
                let n = 1u64.checked_shl(log_n.into()).unwrap_or(u64::MAX);
                ratio(
                    n.saturating_mul(r.into()).saturating_mul(p.into()),
                    limits.scrypt_max_work,
                )
            }
        }
    }

    /// Derives a slot key-encryption key from `secret` and `salt`.
    pub(crate) fn derive(&self, secret: &[u8], salt: &[u8; SALT_LEN]) -> Result<SlotKek> {
        let key = Key256::fill_with(|out| -> Result<()> {
            match *self {
                KdfParams::Argon2id {
                    memory_kib,
                    iterations,
                    parallelism,
                } => {
                    let params =
                        argon2::Params::new(memory_kib, iterations, parallelism, Some(KEY_LEN))
                            .map_err(|_| {
                                Error::InvalidKdfParams("Argon2id parameters out of range")
                            })?;
                    argon2::Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, params)
                        .hash_password_into(secret, salt, out)
                        .map_err(|_| Error::InvalidKdfParams("Argon2id rejected its input"))
                }
                KdfParams::Pbkdf2Sha256 { iterations } => {
                    pbkdf2::pbkdf2_hmac::<sha2::Sha256>(secret, salt, iterations, out);
                    Ok(())
                }
                KdfParams::Scrypt { log_n, r, p } => {
                    let params = scrypt::Params::new(log_n, r, p, KEY_LEN)
                        .map_err(|_| Error::InvalidKdfParams("scrypt parameters out of range"))?;
                    scrypt::scrypt(secret, salt, &params, out)
                        .map_err(|_| Error::InvalidKdfParams("scrypt rejected its output length"))
                }
            }
        })?;
        Ok(SlotKek(key))
    }

    /// Chooses parameters for `algorithm` so that one derivation takes about
    /// `target` on this machine, never below [`Self::recommended_minimum`]
    /// and never above the default [`KdfLimits`].
    ///
    /// Argon2id grows memory first (up to
    /// [`CALIBRATION_MAX_ARGON2_MEMORY_KIB`]), then passes; scrypt grows N;
    /// PBKDF2 grows iterations. Takes roughly twice `target`.
    pub fn calibrate(algorithm: KdfAlgorithm, target: Duration) -> Result<Self> {
        let limits = KdfLimits::default();
        let mut params = KdfParams::recommended_minimum(algorithm);
        let salt = [0x5a; SALT_LEN];
        let mut probe = *b"coffer calibration probe";
        for _ in 0..16 {
            let started = Instant::now();
            drop(params.derive(&probe, &salt)?);
            let elapsed = started.elapsed();
            if elapsed >= target.mul_f64(0.9) {
                break;
            }
            let factor = (target.as_secs_f64() / elapsed.as_secs_f64().max(1e-6)).clamp(1.05, 8.0);
            let next = params.scaled(factor);
            if next == params || next.check_limits(&limits, 0).is_err() {
                break;
            }
            params = next;
        }
        probe.zeroize();
        Ok(params)
    }

    /// These parameters with the work multiplied by about `factor`.
    fn scaled(self, factor: f64) -> Self {
        let grow =
            |v: u32| -> u32 { ((f64::from(v) * factor).ceil() as u32).max(v.saturating_add(1)) };
        match self {
            KdfParams::Argon2id {
                memory_kib,
                iterations,
                parallelism,
            } => {
                if memory_kib < CALIBRATION_MAX_ARGON2_MEMORY_KIB {
                    // Round to whole MiB: the numbers people read in `slot list`.
                    let m = grow(memory_kib)
                        .min(CALIBRATION_MAX_ARGON2_MEMORY_KIB)
                        .div_ceil(1024)
                        * 1024;
                    KdfParams::Argon2id {
                        memory_kib: m,
                        iterations,
                        parallelism,
                    }
                } else {
                    KdfParams::Argon2id {
                        memory_kib,
                        iterations: grow(iterations).min(iterations.saturating_mul(8)),
                        parallelism,
                    }
                }
            }
            KdfParams::Pbkdf2Sha256 { iterations } => KdfParams::Pbkdf2Sha256 {
                iterations: grow(iterations).div_ceil(1000) * 1000,
            },
            KdfParams::Scrypt { log_n, r, p } => {
                // Whole doublings of N, never overshooting; stop at 256 MiB (log2 N
                // = 18 with r = 8), the same bound as Argon2id, for small devices.
                let doublings = factor.log2().floor().max(1.0) as u8;
                KdfParams::Scrypt {
                    log_n: log_n
                        .saturating_add(doublings)
                        .min(CALIBRATION_MAX_SCRYPT_LOG_N),
                    r,
                    p,
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn minimums_meet_themselves_and_fit_the_caps() {
        for alg in [
            KdfAlgorithm::Argon2id,
            KdfAlgorithm::Pbkdf2Sha256,
            KdfAlgorithm::Scrypt,
        ] {
            let p = KdfParams::recommended_minimum(alg);
            p.validate().unwrap();
            assert!(p.meets_recommended_minimum());
            p.check_limits(&KdfLimits::default(), 0).unwrap();
        }
        let weak = KdfParams::Argon2id {
            memory_kib: 64,
            iterations: 1,
            parallelism: 1,
        };
        assert!(!weak.meets_recommended_minimum());
        assert!(!KdfParams::Pbkdf2Sha256 {
            iterations: 599_999
        }
        .meets_recommended_minimum());
    }

    #[test]
    fn calibration_never_goes_below_the_minimum() {
        // A zero target returns the minimum itself after one measurement.
        for alg in [
            KdfAlgorithm::Argon2id,
            KdfAlgorithm::Pbkdf2Sha256,
            KdfAlgorithm::Scrypt,
        ] {
            let p = KdfParams::calibrate(alg, Duration::ZERO).unwrap();
            assert_eq!(p, KdfParams::recommended_minimum(alg));
        }
    }

    #[test]
    fn calibration_grows_argon2_memory_towards_the_target() {
        // Whatever the machine, 20x the time of the minimum needs more work.
        let min = KdfParams::recommended_minimum(KdfAlgorithm::Argon2id);
        let started = Instant::now();
        drop(min.derive(b"x", &[0; SALT_LEN]).unwrap());
        let once = started.elapsed();
        let p = KdfParams::calibrate(KdfAlgorithm::Argon2id, once * 20).unwrap();
        match p {
            KdfParams::Argon2id {
                memory_kib,
                iterations,
                ..
            } => assert!(memory_kib > 19 * 1024 || iterations > 2, "{p:?}"),
            other => panic!("{other:?}"),
        }
        p.check_limits(&KdfLimits::default(), 0).unwrap();
    }

    #[test]
    fn limits_reject_each_oversized_parameter() {
        let l = KdfLimits::default();
        let cases = [
            (
                KdfParams::Argon2id {
                    memory_kib: 2 * 1024 * 1024,
                    iterations: 1,
                    parallelism: 1,
                },
                "Argon2id memory (KiB)",
            ),
            (
                KdfParams::Argon2id {
                    memory_kib: 1024,
                    iterations: 65,
                    parallelism: 1,
                },
                "Argon2id passes",
            ),
            (
                KdfParams::Argon2id {
                    memory_kib: 1024 * 1024,
                    iterations: 5,
                    parallelism: 1,
                },
                "Argon2id memory × passes (KiB)",
            ),
            (
                KdfParams::Pbkdf2Sha256 {
                    iterations: 10_000_001,
                },
                "PBKDF2 iterations",
            ),
            (
                KdfParams::Scrypt {
                    log_n: 21,
                    r: 8,
                    p: 1,
                },
                "scrypt log2(N)",
            ),
            (
                KdfParams::Scrypt {
                    log_n: 20,
                    r: 9,
                    p: 1,
                },
                "scrypt memory (bytes)",
            ),
            (
                KdfParams::Scrypt {
                    log_n: 14,
                    r: 8,
                    p: 17,
                },
                "scrypt lanes p",
            ),
            (
                KdfParams::Scrypt {
                    log_n: 18,
                    r: 8,
                    p: 16,
                },
                "scrypt N·r·p",
            ),
            // Found in review: the scrypt crate allocates 128·r·p bytes too, so
            // p = 2^24 with a tiny N took 22 s and 2 GiB before p was capped.
            (
                KdfParams::Scrypt {
                    log_n: 1,
                    r: 1,
                    p: 1 << 24,
                },
                "scrypt lanes p",
            ),
        ];
        for (params, what) in cases {
            let err = params.check_limits(&l, 3).unwrap_err();
            assert_eq!(err.what, what);
            assert_eq!(err.slot, 3);
        }
    }

    #[test]
    fn each_kdf_is_deterministic_and_salted() {
        for p in [
            KdfParams::Argon2id {
                memory_kib: 64,
                iterations: 1,
                parallelism: 1,
            },
            KdfParams::Pbkdf2Sha256 { iterations: 10 },
            KdfParams::Scrypt {
                log_n: 4,
                r: 8,
                p: 1,
            },
        ] {
            let a = p.derive(b"pw", &[1; SALT_LEN]).unwrap();
            let b = p.derive(b"pw", &[1; SALT_LEN]).unwrap();
            let c = p.derive(b"pw", &[2; SALT_LEN]).unwrap();
            assert_eq!(a.0.expose_secret(), b.0.expose_secret());
            assert_ne!(a.0.expose_secret(), c.0.expose_secret());
        }
    }
}
