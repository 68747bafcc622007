//! Sample data for trying the console (`coffer demo --console`): an
//! organization with people, devices, policies, readings, synced records
//! with a conflict and a pending wipe, all made through the API's own
//! router, as real clients would make them.

use std::net::SocketAddr;

use axum::extract::ConnectInfo;
use axum::http::Method;
use axum::Router;
use coffer_protocol::admin::{
    AddUser, EnrollmentCode, NewEnrollmentCode, OrderWipe, Setup, SetupAnswer, UserAdded,
    WipeOrdered,
};
use coffer_protocol::data::{Batch, DeliveryAnswer, Reading};
use coffer_protocol::device::{
    CheckIn, CheckInAnswer, Deliver, DepositEscrow, Enroll, EnrollAnswer,
};
use coffer_protocol::policy::{PublishRequest, Rules, SignedPolicy};
use coffer_protocol::session::{Login, LoginAnswer};
use coffer_protocol::sync::{
    AuthorBound, BindAuthor, Push, PushAnswer, PushBatch, PushOp, Revision,
};
use coffer_protocol::{Answer, Endpoint, NoContent, WireSecret};
use serde_json::json;

use crate::local::{self, LocalRequest};
use crate::serve::Server;

/// The account the sample data is seen with.
#[derive(Debug)]
pub struct DemoLogin {
    /// The owner's name.
    pub user: String,
    /// Their password (random: print it for the person trying the demo).
    pub password: WireSecret,
    /// The organization's id.
    pub organization_id: i64,
}

/// Why the sample data could not be made.
#[derive(Debug, thiserror::Error)]
#[error("making the demo's sample data failed at {step}: {problem}")]
pub struct DemoError {
    step: &'static str,
    problem: String,
}

/// The organization's name in the demo.
pub const DEMO_ORGANIZATION: &str = "Demo Clinic";

struct Seeder {
    api: Router,
}

impl Seeder {
    async fn send<T: Answer>(
        &self,
        step: &'static str,
        method: Method,
        path: &str,
        token: Option<&WireSecret>,
        body: Option<(Vec<u8>, &str)>,
    ) -> Result<T, DemoError> {
        let failed = |problem: String| DemoError { step, problem };
        let mut extensions = axum::http::Extensions::new();
        extensions.insert(ConnectInfo(SocketAddr::from(([127, 0, 0, 1], 0))));
        let (status, bytes) = local::call(
            &self.api,
            LocalRequest {
                method,
                path,
                token,
                body,
                headers: &[],
                extensions,
                max_answer: local::MAX_LOCAL_ANSWER,
            },
        )
        .await
        .map_err(|e| failed(e.to_string()))?;
        if !status.is_success() {
            return Err(failed(format!(
                "{status}: {}",
                String::from_utf8_lossy(&bytes)
            )));
        }
        T::decode(&bytes).map_err(|e| failed(e.to_string()))
    }

    /// A request of an [`Endpoint`] type.
    async fn endpoint<E: Endpoint>(
        &self,
        step: &'static str,
        request: &E,
        token: Option<&WireSecret>,
    ) -> Result<E::Answer, DemoError> {
        let method = Method::from_bytes(E::METHOD.as_str().as_bytes()).map_err(|e| DemoError {
            step,
            problem: e.to_string(),
        })?;
        let path = request.path();
        self.send(step, method, &path, token, request.body()).await
    }

    /// An admin request with a JSON body.
    async fn admin<T: Answer>(
        &self,
        step: &'static str,
        method: Method,
        path: &str,
        token: &WireSecret,
        body: &impl serde::Serialize,
    ) -> Result<T, DemoError> {
        let bytes = serde_json::to_vec(body).map_err(|e| DemoError {
            step,
            problem: e.to_string(),
        })?;
        self.send(
            step,
            method,
            path,
            Some(token),
            Some((bytes, "application/json")),
        )
        .await
    }
}

fn password() -> Result<WireSecret, DemoError> {
    crate::api::new_token()
        .map(|t| WireSecret::new(t[..20].to_owned()))
        .map_err(|_| DemoError {
            step: "drawing a password",
            problem: "no randomness".to_owned(),
        })
}

fn revision(origin: u8, seq: u64) -> Result<Revision, DemoError> {
    Revision::new([origin; 16], seq).map_err(|e| DemoError {
        step: "naming a revision",
        problem: e.to_string(),
    })
}

impl Server {
    /// Fills a new, empty server with sample data and answers the owner's
    /// login. Refused on a server that is set up already (its setup token
    /// is gone): the demo never writes into real data.
    pub async fn seed_demo(&mut self) -> Result<DemoLogin, DemoError> {
        let setup_token = self.take_setup_token().ok_or_else(|| DemoError {
            step: "setting up",
            problem: "the server is set up already; the demo needs an empty one".to_owned(),
        })?;
        let s = Seeder {
            api: crate::api::router(self.state().clone()),
        };
        let owner_password = password()?;
        let setup = Setup {
            setup_token,
            organization: DEMO_ORGANIZATION.to_owned(),
            owner: "demo".to_owned(),
            password: WireSecret::new(
                secrecy::ExposeSecret::expose_secret(&owner_password).to_owned(),
            ),
        };
        let body = serde_json::to_vec(&setup).map_err(|e| DemoError {
            step: "setting up",
            problem: e.to_string(),
        })?;
        let set_up: SetupAnswer = s
            .send(
                "setting up",
                Method::POST,
                "/v1/setup",
                None,
                Some((body, "application/json")),
            )
            .await?;
        let org = set_up.organization_id;
        let login = Login {
            user: "demo".to_owned(),
            password: WireSecret::new(
                secrecy::ExposeSecret::expose_secret(&owner_password).to_owned(),
            ),
        };
        let session: LoginAnswer = s.endpoint("signing in", &login, None).await?;
        let token = &session.token;

        for (user, role) in [("amina", "admin"), ("bilal", "member"), ("chen", "auditor")] {
            let add = AddUser {
                user: user.to_owned(),
                password: password()?,
                role: role.to_owned(),
            };
            let _: UserAdded = s
                .admin(
                    "adding people",
                    Method::POST,
                    &format!("/v1/orgs/{org}/users"),
                    token,
                    &add,
                )
                .await?;
        }

        let mut rules = Rules::default();
        let _: SignedPolicy = s
            .admin(
                "publishing a policy",
                Method::POST,
                &format!("/v1/orgs/{org}/policies"),
                token,
                &PublishRequest {
                    version: 1,
                    rules: rules.clone(),
                },
            )
            .await?;
        rules.check_in_secs = 900;
        rules.offline.block_after_hours = 48;
        rules.sync = vec!["visits".to_owned()];
        let _: SignedPolicy = s
            .admin(
                "publishing a policy",
                Method::POST,
                &format!("/v1/orgs/{org}/policies"),
                token,
                &PublishRequest { version: 2, rules },
            )
            .await?;

        let mut devices = Vec::new();
        for name in [
            "ward-tablet-1",
            "ward-tablet-2",
            "van-laptop",
            "spare-phone",
        ] {
            let code: EnrollmentCode = s
                .admin(
                    "making an enrollment code",
                    Method::POST,
                    &format!("/v1/orgs/{org}/enrollment-codes"),
                    token,
                    &NewEnrollmentCode::default(),
                )
                .await?;
            let enrolled: EnrollAnswer = s
                .endpoint(
                    "enrolling a device",
                    &Enroll {
                        code: code.code,
                        name: name.to_owned(),
                    },
                    None,
                )
                .await?;
            devices.push(enrolled);
        }
        let now = crate::store::now_unix();
        // The tablets check in, hold an escrow key and send readings; the
        // laptop and the phone never did.
        for (i, tablet) in devices.iter().take(2).enumerate() {
            let _: CheckInAnswer = s
                .endpoint("checking in", &CheckIn, Some(&tablet.device_token))
                .await?;
            let escrow = DepositEscrow {
                escrow_key: WireSecret::new(hex::encode([0x5a_u8; 32])),
            };
            let _: NoContent = s
                .endpoint(
                    "depositing an escrow key",
                    &escrow,
                    Some(&tablet.device_token),
                )
                .await?;
            for day in 0..3_i64 {
                let readings = (0..24_i64)
                    .flat_map(|hour| {
                        let at = now - (3 - day) * 86_400 + hour * 3600;
                        #[allow(clippy::cast_precision_loss)]
                        let swing = ((hour as f64) / 24.0 * std::f64::consts::TAU).sin();
                        [
                            Reading {
                                at,
                                name: "fridge.temp_c".to_owned(),
                                value: json!((4.0 + swing * 1.5 + i as f64 * 0.4).round_to_tenth()),
                            },
                            Reading {
                                at,
                                name: "battery.percent".to_owned(),
                                value: json!(100 - hour * 3 - i64::try_from(i).unwrap_or(0) * 5),
                            },
                        ]
                    })
                    .collect();
                let batch = Batch {
                    batch_id: format!("demo-{i}-day-{day}"),
                    readings,
                };
                let body = serde_json::to_vec(&batch).map_err(|e| DemoError {
                    step: "sending readings",
                    problem: e.to_string(),
                })?;
                let _: DeliveryAnswer = s
                    .endpoint(
                        "sending readings",
                        &Deliver {
                            body,
                            content_type: "application/json",
                        },
                        Some(&tablet.device_token),
                    )
                    .await?;
            }
        }

        // Both tablets sync visits as the local author "amina", who is the
        // server's amina; they edit one visit apart: a conflict to resolve.
        let me: coffer_protocol::admin::MemberList = s
            .send(
                "listing people",
                Method::GET,
                &format!("/v1/orgs/{org}/users"),
                Some(token),
                None,
            )
            .await?;
        let amina = me
            .members
            .iter()
            .find(|m| m.name == "amina")
            .map(|m| m.id)
            .unwrap_or_default();
        for tablet in devices.iter().take(2) {
            let bind = BindAuthor {
                device_id: tablet.device_id,
                author: "amina".to_owned(),
                user_id: amina,
            };
            let _: AuthorBound = s
                .admin(
                    "binding an author",
                    Method::POST,
                    &format!("/v1/orgs/{org}/sync/authors/bind"),
                    token,
                    &bind,
                )
                .await?;
        }
        let visit =
            |id: &str, rev: Revision, base: Option<Revision>, body: serde_json::Value| PushOp {
                collection: "home-visits".to_owned(),
                id: id.to_owned(),
                revision: rev,
                base,
                deleted: false,
                body: Some(body),
                files: Vec::new(),
                author: "amina".to_owned(),
                resolves: Vec::new(),
            };
        let push = |batch_id: &str, ops: Vec<PushOp>| Push {
            app: "visits".to_owned(),
            batch: PushBatch {
                batch_id: batch_id.to_owned(),
                ops,
            },
        };
        let first = push(
            "demo-visits-1",
            vec![
                visit(
                    "2026-118",
                    revision(0xa1, 1)?,
                    None,
                    json!({"patient": "R. Osei", "notes": "Dressing changed", "next": "Thursday"}),
                ),
                visit(
                    "2026-119",
                    revision(0xa1, 2)?,
                    None,
                    json!({"patient": "M. Lind", "notes": "BP 128/82"}),
                ),
                visit(
                    "2026-120",
                    revision(0xa1, 3)?,
                    None,
                    json!({"patient": "J. Park", "notes": "No answer at door"}),
                ),
            ],
        );
        let _: PushAnswer = s
            .endpoint("syncing records", &first, Some(&devices[0].device_token))
            .await?;
        let edit_a = push(
            "demo-visits-2",
            vec![visit(
                "2026-118",
                revision(0xa1, 4)?,
                Some(revision(0xa1, 1)?),
                json!({"patient": "R. Osei", "notes": "Dressing changed; wound healing well", "next": "Thursday"}),
            )],
        );
        let _: PushAnswer = s
            .endpoint("syncing records", &edit_a, Some(&devices[0].device_token))
            .await?;
        let edit_b = push(
            "demo-visits-3",
            vec![visit(
                "2026-118",
                revision(0xb2, 1)?,
                Some(revision(0xa1, 1)?),
                json!({"patient": "R. Osei", "notes": "Dressing changed", "next": "Friday"}),
            )],
        );
        let _: PushAnswer = s
            .endpoint("syncing records", &edit_b, Some(&devices[1].device_token))
            .await?;

        // The phone was lost: a wipe waits for its next check-in.
        let _: WipeOrdered = s
            .admin(
                "ordering a wipe",
                Method::POST,
                &format!("/v1/orgs/{org}/devices/{}/wipe", devices[3].device_id),
                token,
                &OrderWipe::default(),
            )
            .await?;
        Ok(DemoLogin {
            user: "demo".to_owned(),
            password: owner_password,
            organization_id: org,
        })
    }
}

/// One decimal place, for readings that look like a sensor's.
trait RoundToTenth {
    fn round_to_tenth(self) -> f64;
}

impl RoundToTenth for f64 {
    fn round_to_tenth(self) -> f64 {
        (self * 10.0).round() / 10.0
    }
}
