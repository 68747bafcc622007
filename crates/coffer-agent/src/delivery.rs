//! Data delivery (docs/protocol.md, section 7): readings queued as batches
//! in the vault's encrypted settings, sent oldest first after a check-in,
//! each under its own batch id (so a retry is stored once), kept while the
//! server cannot be reached.

use coffer_device::UnlockedVault;
use coffer_protocol::data::{Batch, Reading, MAX_READINGS};
use coffer_protocol::device::Deliver;
use coffer_protocol::{Endpoint, MAX_REQUEST_BODY};

use crate::enrollment::{key, number_setting, Enrollment};
use crate::error::{Error, Result};
use crate::{Agent, CheckInReport, Credentials};

/// What a delivery did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeliveryReport {
    /// Batches the server stored (or had stored: a retry).
    pub delivered: usize,
    /// Batches still queued.
    pub queued: usize,
    /// Batches the server will never take, dropped from the queue: why.
    pub rejected: Vec<String>,
    /// The check-in that came first, if the server was reached.
    pub check_in: Option<CheckInReport>,
    /// Of `delivered`, the batches the MQTT broker acknowledged
    /// ([`Agent::deliver_mqtt`]).
    pub over_mqtt: usize,
    /// Why [`Agent::deliver_mqtt`] sent (some) batches over HTTP instead.
    pub fell_back: Option<String>,
}

/// Readings from `text`: a JSON array of readings, a batch object with
/// `readings`, or one reading object per line.
pub fn parse_readings(text: &str) -> Result<Vec<Reading>> {
    #[derive(serde::Deserialize)]
    #[serde(untagged)]
    enum Input {
        Many(Vec<Reading>),
        Batch { readings: Vec<Reading> },
        One(Reading),
    }
    let bad = |e: &dyn std::fmt::Display| {
        Error::InvalidReadings(format!(
            "not JSON readings (an array, {{\"readings\": [...]}}, or one object per line, each with at, name and value): {e}"
        ))
    };
    let text = text.trim();
    if text.is_empty() {
        return Ok(Vec::new());
    }
    match serde_json::from_str::<Input>(text) {
        Ok(Input::Many(readings) | Input::Batch { readings }) => Ok(readings),
        Ok(Input::One(reading)) => Ok(vec![reading]),
        Err(whole) => {
            let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
            if lines.len() < 2 {
                return Err(bad(&whole));
            }
            lines
                .into_iter()
                .map(|l| serde_json::from_str(l).map_err(|e| bad(&e)))
                .collect()
        }
    }
}

impl Agent {
    /// Queues `readings` as one batch in the vault's encrypted settings,
    /// durably, after checking them as the server will (a batch it would
    /// refuse would otherwise wait, or be dropped, after the input is
    /// gone). Returns the batch id; `None` for no readings.
    pub fn queue_readings(
        &self,
        vault: &UnlockedVault,
        readings: Vec<Reading>,
    ) -> Result<Option<String>> {
        if readings.is_empty() {
            return Ok(None);
        }
        if readings.len() > MAX_READINGS {
            return Err(Error::InvalidReadings(format!(
                "at most {MAX_READINGS} readings per delivery"
            )));
        }
        // Queue order is the order of a per-vault counter (not the clock,
        // which may repeat a second or go back); the random part keeps ids
        // unique across devices, so the server's dedupe never merges two.
        let sequence = number_setting(vault, key::QUEUE_SEQUENCE)?.unwrap_or(0) + 1;
        let mut id = [0u8; 16];
        rand_core::RngCore::fill_bytes(&mut rand_core::OsRng, &mut id);
        let batch = Batch {
            batch_id: format!("{sequence:020}-{}", hex::encode(id)),
            readings,
        };
        batch
            .check()
            .map_err(|e| Error::InvalidReadings(e.to_string()))?;
        let body = serde_json::to_vec(&batch).map_err(|e| Error::InvalidReadings(e.to_string()))?;
        if body.len() > MAX_REQUEST_BODY {
            return Err(Error::InvalidReadings(format!(
                "they come to {} bytes, over the server's {MAX_REQUEST_BODY} per batch: deliver them in smaller parts",
                body.len()
            )));
        }
        vault.set_setting(key::QUEUE_SEQUENCE, Some(sequence.to_string().as_bytes()))?;
        vault.set_setting(&format!("{}{}", key::QUEUE, batch.batch_id), Some(&body))?;
        Ok(Some(batch.batch_id))
    }

    /// The number of batches waiting in the queue.
    pub fn queued(&self, vault: &UnlockedVault) -> Result<usize> {
        Ok(vault.setting_keys(key::QUEUE)?.len())
    }

    /// Checks in (a wipe order is carried out before anything is sent),
    /// then sends every queued batch, oldest first, retrying a lost
    /// connection `retries` times; offline, the batches stay queued. A
    /// batch is removed from the queue only when the server's answer names
    /// it as stored, or when the server refuses it as invalid for good.
    pub fn deliver(&self, vault: UnlockedVault, retries: u32) -> Result<DeliveryReport> {
        let queued = self.queued(&vault)?;
        let (check_in, vault) = match self.check_in(vault) {
            Ok(done) => done,
            Err(e) if e.is_unreachable() => {
                return Ok(DeliveryReport {
                    delivered: 0,
                    queued,
                    rejected: Vec::new(),
                    check_in: None,
                    over_mqtt: 0,
                    fell_back: None,
                })
            }
            Err(e) => return Err(e),
        };
        let enrollment = Enrollment::read(&vault)?;
        let client = self.client(&enrollment.server)?;
        let credentials = Credentials {
            token: Some(&enrollment.token),
            user: None,
        };
        let mut delivered = 0;
        let mut rejected = Vec::new();
        for setting in vault.setting_keys(key::QUEUE)? {
            let Some(body) = vault.setting(&setting)? else {
                continue;
            };
            let batch_id = setting.trim_start_matches(key::QUEUE);
            let request = Deliver {
                body,
                content_type: "application/json",
            };
            let mut attempt = 0;
            let sent = loop {
                match client.send(&request, credentials) {
                    Err(e) if e.is_unreachable() && attempt < retries => {
                        attempt += 1;
                        std::thread::sleep(std::time::Duration::from_millis(250 << attempt.min(4)));
                    }
                    other => break other,
                }
            };
            match sent {
                Ok(answer) if answer.batch_id == batch_id => {
                    vault.set_setting(&setting, None)?;
                    delivered += 1;
                }
                Ok(_) => {
                    return Err(Error::BadAnswer {
                        endpoint: Deliver::PATH,
                        problem: "the answer names another batch".into(),
                    })
                }
                Err(e) if e.is_unreachable() => break,
                Err(Error::Refused {
                    status, message, ..
                }) if (400..500).contains(&status) && ![401, 403, 404, 429].contains(&status) => {
                    // The server will never take this batch: out of the
                    // queue, and said.
                    vault.set_setting(&setting, None)?;
                    rejected.push(message);
                }
                Err(e) => return Err(e),
            }
        }
        Ok(DeliveryReport {
            delivered,
            queued: self.queued(&vault)?,
            rejected,
            check_in: Some(check_in),
            over_mqtt: 0,
            fell_back: None,
        })
    }
}
