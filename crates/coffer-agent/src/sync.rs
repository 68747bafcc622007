//! Record sync (docs/protocol.md, section 8): a round is a check-in (wipe
//! orders and the signed policy first), then, for each app the policy's
//! `sync` list names, a push of every pending local change and a pull of
//! the organization's changes until the feed's end.
//!
//! The state lives in each app's encrypted database (coffer_device's
//! sync state): a page of pulled records and its cursor land in one
//! transaction, and so does a push's answer, so a killed app or a lost
//! connection only repeats work. A push is named by its content, so a
//! retry after a crash is recognised by the server as the same batch.
//!
//! Files sync (crate::files) rides in the same round: before each push
//! batch, the files its operations reference are uploaded; after the
//! pull, the files the pulled records reference are downloaded.
//!
//! Purge: only on an explicit statement — the check-in saying the device
//! is revoked, or a verified signed policy whose `sync` list no longer
//! names an app that synced — the app's data is crypto-erased
//! ([`coffer_device::UnlockedVault::purge_app`]) and the purge
//! acknowledged. Data that merely looks missing purges nothing.

use coffer_device::{Ack, AckOutcome, PendingChange, PulledHead, RecordStore, Side, UnlockedVault};
use coffer_protocol::sync::{
    self as wire, Leaf, Outcome, Pull, PullAnswer, Purged, Push, PushBatch, PushOp, Revision,
};
use coffer_protocol::{Endpoint, ErrorCode};
use sha2::{Digest, Sha256};

use crate::enrollment::Enrollment;
use crate::error::{Error, Result};
use crate::files::{FileDirection, FileProblem, FileSync, UPLOAD};
use crate::{Agent, CheckInReport, Client, Credentials};

/// Settings key prefix of the apps that have synced on this vault (so a
/// revocation, or an app leaving the policy's list, knows what to purge).
const SYNCED_APP: &str = "sync.app.";
/// Settings key prefix of purges done but not yet reported to the server
/// (the report is retried at every round until the server has it).
const PURGE_UNREPORTED: &str = "sync.purged.";
/// Most bytes of operations in one push (under the server's limit, with
/// room for the largest single record).
const PUSH_BYTES: usize = wire::MAX_PUSH_BODY - wire::MAX_RECORD_BODY - (64 << 10);

/// Told as a round goes (for progress bars); every method has a default
/// that does nothing.
pub trait SyncObserver {
    /// `done` of `total` pending changes of `app` delivered.
    fn pushed(&mut self, _app: &str, _done: u64, _total: u64) {}
    /// `records` records of `app` pulled so far in this round.
    fn pulled(&mut self, _app: &str, _records: u64) {}
    /// `done` of the `total` bytes of the file `name` of `app` are on the
    /// other side (an upload: acknowledged by the server; a download:
    /// written here). Called when a file starts (with where it resumes)
    /// and after every piece or range.
    fn file_progress(
        &mut self,
        _app: &str,
        _direction: FileDirection,
        _name: &str,
        _done: u64,
        _total: u64,
    ) {
    }
}

/// An observer that is told nothing.
pub struct Quiet;

impl SyncObserver for Quiet {}

/// What one round did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyncReport {
    /// The check-in that came first.
    pub check_in: CheckInReport,
    /// Each app that syncs.
    pub apps: Vec<AppSync>,
    /// Apps purged in this round, as the server or the policy said.
    pub purged: Vec<String>,
}

/// What a round did for one app.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppSync {
    /// The app.
    pub app: String,
    /// Changes the server took as heads.
    pub applied: u64,
    /// Changes it had already (retries).
    pub duplicates: u64,
    /// Changes it kept as conflict leaves.
    pub conflicts: u64,
    /// Changes it refused: (collection, id, code). Not `missing_file`: such
    /// a change stays pending, and its file is in
    /// [`AppSync::file_problems`].
    pub rejected: Vec<(String, String, String)>,
    /// Records pulled.
    pub pulled: u64,
    /// Pull requests made.
    pub pages: u64,
    /// Whether the server's cursor had expired and the pull started over
    /// (no local change was lost).
    pub reset: bool,
    /// Files uploaded whole in this round (not those the server held).
    pub files_uploaded: u64,
    /// Bytes of pieces the server acknowledged.
    pub bytes_uploaded: u64,
    /// Files downloaded, checked and stored in this round.
    pub files_downloaded: u64,
    /// Bytes fetched.
    pub bytes_downloaded: u64,
    /// Files that did not move, and why (an upload refused or failed holds
    /// its record back, and a record the server refused with
    /// `missing_file` waits for its file: the change stays pending; a
    /// download refused, not found or answered wrongly stays queued, and
    /// the previous version of the file stays). One file's problem never
    /// ends the round.
    pub file_problems: Vec<FileProblem>,
    /// The app's sync state after the round.
    pub state: coffer_device::SyncState,
}

/// A record's file references as the device stores them, checked as the
/// server's rules say (the names and versions then reach the file store's
/// download queue).
fn to_files(
    files: Vec<wire::FileRef>,
    deleted: bool,
) -> std::result::Result<Vec<coffer_device::FileRef>, &'static str> {
    if deleted && !files.is_empty() {
        return Err("a deleted record references files");
    }
    if files.len() > wire::MAX_FILES {
        return Err("too many files");
    }
    let mut names = std::collections::HashSet::new();
    files
        .into_iter()
        .map(|f| {
            let valid = wire::valid_name(&f.name)
                && coffer_protocol::files::is_sha256_hex(&f.sha256)
                && f.size <= coffer_protocol::files::MAX_FILE_SIZE
                && f.content_type
                    .as_deref()
                    .is_none_or(coffer_protocol::files::is_content_type);
            if !valid {
                return Err("a file reference breaks the protocol's rules");
            }
            if !names.insert(f.name.clone()) {
                return Err("a record names one file twice");
            }
            Ok(coffer_device::FileRef {
                name: f.name,
                sha256: f.sha256,
                size: f.size,
                content_type: f.content_type,
            })
        })
        .collect()
}

/// A pulled record as the device stores it, after checking it as the
/// server's rules say a record must be (a hostile answer is an error, and
/// nothing of its page is applied).
fn to_head(record: wire::PulledRecord) -> std::result::Result<PulledHead, &'static str> {
    let side = |revision: Revision,
                base: Option<Revision>,
                deleted: bool,
                body: Option<serde_json::Value>,
                files: Vec<wire::FileRef>,
                author: String|
     -> std::result::Result<Side, &'static str> {
        match (&body, deleted) {
            (Some(_), true) => return Err("a deleted record carries a body"),
            (None, false) | (Some(serde_json::Value::Null), false) => {
                return Err("a live record has no body")
            }
            (Some(b), false) if wire::body_len(b) > wire::MAX_RECORD_BODY => {
                return Err("a record body is over the limit")
            }
            _ => {}
        }
        if author.len() > wire::MAX_AUTHOR {
            return Err("an author name is over the limit");
        }
        Ok(Side {
            revision: revision.to_string(),
            base: base.map(|b| b.to_string()),
            deleted,
            body,
            author,
            files: to_files(files, deleted)?,
        })
    };
    if !wire::valid_name(&record.collection) || !wire::valid_name(&record.id) {
        return Err("a collection or record id breaks the naming rule");
    }
    if record.conflicts.len() > 1024 {
        return Err("too many conflict leaves");
    }
    let head = side(
        record.revision,
        None,
        record.deleted,
        record.body,
        record.files,
        record.author,
    )?;
    let leaves = record
        .conflicts
        .into_iter()
        .map(|l: Leaf| side(l.revision, l.base, l.deleted, l.body, l.files, l.author))
        .collect::<std::result::Result<_, _>>()?;
    Ok(PulledHead {
        collection: record.collection,
        id: record.id,
        seq: record.seq,
        head,
        leaves,
    })
}

/// The push operation of a pending change.
fn to_op(origin: [u8; 16], change: &PendingChange) -> Result<PushOp> {
    let bad = |what: &str| {
        Error::Device(coffer_device::Error::Database {
            op: "reading pending changes",
            kind: coffer_device::DatabaseErrorKind::Other(what.into()),
        })
    };
    let parse = |text: &str| {
        text.parse::<Revision>()
            .map_err(|_| bad("a stored revision"))
    };
    Ok(PushOp {
        collection: change.collection.clone(),
        id: change.id.clone(),
        revision: Revision::new(origin, change.local_seq).map_err(|_| bad("a local sequence"))?,
        base: change.base.as_deref().map(parse).transpose()?,
        deleted: change.deleted,
        body: change.body.clone(),
        files: change
            .files
            .iter()
            .map(|f| wire::FileRef {
                name: f.name.clone(),
                sha256: f.sha256.clone(),
                size: f.size,
                content_type: f.content_type.clone(),
            })
            .collect(),
        author: if change.author.is_empty() {
            "unknown".to_owned()
        } else {
            change.author.clone()
        },
        resolves: change
            .resolves
            .iter()
            .map(|r| parse(r))
            .collect::<Result<_>>()?,
    })
}

/// A batch id named by the batch's content: a retry of the same changes
/// after a crash is the same batch to the server. A batch that carries a
/// change the server answered `missing_file` before (`again`) is named by
/// its content and a random salt: under its old name the server would
/// give its stored answer again, not look at the change anew (a retry of
/// it after a crash is still recognised, by each revision: `duplicate`).
fn batch_of(ops: Vec<PushOp>, again: bool) -> PushBatch {
    let mut batch = PushBatch {
        batch_id: String::new(),
        ops,
    };
    let mut hasher = Sha256::new();
    hasher.update(batch.digest());
    if again {
        let mut salt = [0u8; 16];
        rand_core::RngCore::fill_bytes(&mut rand_core::OsRng, &mut salt);
        hasher.update(salt);
    }
    batch.batch_id = format!("c{}", &hex::encode(hasher.finalize())[..40]);
    batch
}

fn origin_bytes(origin: &str) -> Result<[u8; 16]> {
    let mut bytes = [0u8; 16];
    hex::decode_to_slice(origin, &mut bytes).map_err(|_| {
        Error::Device(coffer_device::Error::Database {
            op: "reading the sync state",
            kind: coffer_device::DatabaseErrorKind::Other("a stored origin is not hex".into()),
        })
    })?;
    Ok(bytes)
}

/// Requests of one endpoint sent in order from a connection of their own,
/// on a thread of their own, while the caller works on the last answer:
/// [`Pipe::send`] queues one, [`Pipe::answer`] waits for the oldest one's.
struct Pipe<E: Endpoint> {
    ask: std::sync::mpsc::Sender<E>,
    given: std::sync::mpsc::Receiver<Result<E::Answer>>,
}

impl<E: Endpoint> Pipe<E> {
    fn stopped() -> Error {
        Error::BadAnswer {
            endpoint: E::PATH,
            problem: "the connection's thread stopped".into(),
        }
    }

    fn send(&self, request: E) -> Result<()> {
        self.ask.send(request).map_err(|_| Self::stopped())
    }

    fn answer(&self) -> Result<E::Answer> {
        self.given.recv().map_err(|_| Self::stopped())?
    }
}

/// Runs `work` with a [`Pipe`] of `E` requests. The connection's thread
/// ends when `work` returns (its queue closes), and is joined before this
/// returns.
fn pipelined<E, R>(
    connect: &(dyn Fn() -> Result<Client> + Sync),
    credentials: Credentials<'_>,
    work: impl FnOnce(&Pipe<E>) -> Result<R>,
) -> Result<R>
where
    E: Endpoint + Send,
    E::Answer: Send,
{
    std::thread::scope(|scope| {
        let (ask, asked) = std::sync::mpsc::channel::<E>();
        // One answer waits at most: the thread stays one request ahead.
        let (give, given) = std::sync::mpsc::sync_channel::<Result<E::Answer>>(1);
        scope.spawn(move || {
            let client = match connect() {
                Ok(client) => client,
                Err(e) => {
                    let _ = give.send(Err(e));
                    return;
                }
            };
            while let Ok(request) = asked.recv() {
                if give.send(client.send(&request, credentials)).is_err() {
                    return;
                }
            }
        });
        work(&Pipe { ask, given })
    })
}

/// The next batch of pending changes after the local sequence `after`:
/// the changes it carries, the batch, and the highest local sequence it
/// looked at. What the server would refuse is answered here (and kept).
/// The files its operations reference are on the server before it is
/// returned; an operation whose file the server refused is left out (the
/// change stays pending, for a later round). `None` when nothing is
/// pending after `after`.
fn next_batch(
    records: &mut RecordStore,
    origin: [u8; 16],
    mut after: u64,
    files: &mut FileSync<'_>,
    report: &mut AppSync,
    observer: &mut dyn SyncObserver,
) -> Result<Option<(Vec<PendingChange>, PushBatch, u64)>> {
    loop {
        let pending = records.pending_changes_after(after, wire::MAX_PUSH_OPS)?;
        if pending.is_empty() {
            return Ok(None);
        }
        let mut changes = Vec::new();
        let mut ops = Vec::new();
        let mut local_acks = Vec::new();
        let mut bytes = 0usize;
        for change in pending {
            after = after.max(change.local_seq);
            let op = to_op(origin, &change)?;
            if let Err(refusal) = op.check() {
                let code = refusal.code.as_str().to_owned();
                report
                    .rejected
                    .push((change.collection.clone(), change.id.clone(), code.clone()));
                local_acks.push(Ack {
                    collection: change.collection.clone(),
                    id: change.id.clone(),
                    local_seq: change.local_seq,
                    revision: op.revision.to_string(),
                    outcome: AckOutcome::Rejected { code },
                });
                continue;
            }
            if !op.files.is_empty() && !files.ensure_uploaded(&op.files, report, observer)? {
                continue;
            }
            // The operation as it will be sent (long names and many
            // resolved leaves count too), so a batch stays under the limit.
            bytes += serde_json::to_vec(&op).map_or(wire::MAX_RECORD_BODY, |v| v.len()) + 1;
            changes.push(change);
            ops.push(op);
            if bytes > PUSH_BYTES {
                break;
            }
        }
        records.acknowledge(&local_acks)?;
        if !ops.is_empty() {
            let again = changes.iter().any(|c| c.waiting.is_some());
            return Ok(Some((changes, batch_of(ops, again), after)));
        }
    }
}

/// The server's answer to `batch`, as the device records it. A change
/// refused with `missing_file` stays pending ([`AckOutcome::Waiting`]: its
/// file may reach the server later, uploaded at the next round or from
/// another device) and is reported as a file problem.
fn acks_of(
    changes: &[PendingChange],
    batch: &PushBatch,
    answer: coffer_protocol::sync::PushAnswer,
    files: &mut FileSync<'_>,
    report: &mut AppSync,
) -> Result<Vec<Ack>> {
    if answer.batch_id != batch.batch_id || answer.results.len() != batch.ops.len() {
        return Err(Error::BadAnswer {
            endpoint: Push::PATH,
            problem: "the answer does not match the batch".into(),
        });
    }
    let mut acks = Vec::new();
    for ((change, op), result) in changes.iter().zip(&batch.ops).zip(answer.results) {
        if result.revision != op.revision {
            return Err(Error::BadAnswer {
                endpoint: Push::PATH,
                problem: "a result names another revision".into(),
            });
        }
        let outcome = match result.outcome {
            Outcome::Applied { seq } => {
                report.applied += 1;
                AckOutcome::Applied { seq }
            }
            Outcome::Duplicate => {
                report.duplicates += 1;
                AckOutcome::Duplicate
            }
            Outcome::Conflict { .. } => {
                report.conflicts += 1;
                AckOutcome::Conflict
            }
            Outcome::Rejected {
                code: code @ wire::RejectCode::MissingFile,
                ..
            } => {
                files.missing_on_server(&op.files, report);
                AckOutcome::Waiting {
                    code: code.as_str().to_owned(),
                }
            }
            Outcome::Rejected { code, .. } => {
                let code = code.as_str().to_owned();
                report
                    .rejected
                    .push((change.collection.clone(), change.id.clone(), code.clone()));
                AckOutcome::Rejected { code }
            }
            // A newer server's outcome: nothing is acted on, the change
            // stays pending (for the next round).
            _ => continue,
        };
        acks.push(Ack {
            collection: change.collection.clone(),
            id: change.id.clone(),
            local_seq: change.local_seq,
            revision: op.revision.to_string(),
            outcome,
        });
    }
    Ok(acks)
}

/// Pushes every pending change of one app, a batch at a time. The next
/// batch is read and encoded while the server stores the last one (sent
/// from a second connection on its own thread); each answer is recorded
/// in one local transaction as it comes, in order.
#[allow(clippy::too_many_arguments)]
fn push_all(
    connect: &(dyn Fn() -> Result<Client> + Sync),
    credentials: Credentials<'_>,
    app: &str,
    records: &mut RecordStore,
    files: &mut FileSync<'_>,
    report: &mut AppSync,
    observer: &mut dyn SyncObserver,
) -> Result<()> {
    let origin = origin_bytes(&records.sync_origin()?)?;
    let total = records.sync_state()?.pending;
    let Some(first) = next_batch(records, origin, 0, files, report, observer)? else {
        return Ok(());
    };
    pipelined(connect, credentials, |pipe: &Pipe<Push>| {
        let push = |batch: PushBatch| Push {
            app: app.to_owned(),
            batch,
        };
        let mut done = 0u64;
        let (mut changes, mut batch, mut after) = first;
        pipe.send(push(batch.clone()))?;
        loop {
            // Read the next batch (and upload its files) while this one is
            // on its way.
            let next = next_batch(records, origin, after, files, report, observer)?;
            let answer = pipe.answer()?;
            let acks = acks_of(&changes, &batch, answer, files, report)?;
            records.acknowledge(&acks)?;
            done += acks.len() as u64;
            observer.pushed(app, done, total.max(done));
            match next {
                Some((c, b, a)) => {
                    pipe.send(push(b.clone()))?;
                    (changes, batch, after) = (c, b, a);
                }
                None => return Ok(()),
            }
        }
    })
}

/// Pulls one app's changes until the feed's end. A cursor the server no
/// longer keeps starts the pull over, once per round.
///
/// The next page is requested as soon as a page arrives, from a second
/// connection on its own thread, while this one applies the page: the
/// server reads and seals the next page while the device writes this one
/// (a kill loses at most the page in flight; nothing is applied out of
/// order, and a cursor is stored only with its page).
fn pull_all(
    connect: &(dyn Fn() -> Result<Client> + Sync),
    credentials: Credentials<'_>,
    app: &str,
    records: &mut RecordStore,
    report: &mut AppSync,
    observer: &mut dyn SyncObserver,
) -> Result<()> {
    let origin = records.sync_origin()?;
    let cursor = records.sync_state()?.cursor;
    pipelined(connect, credentials, |pipe: &Pipe<Pull>| {
        let pull = |after: Option<String>| Pull {
            app: app.to_owned(),
            after,
            limit: None,
        };
        pipe.send(pull(cursor))?;
        loop {
            let page: PullAnswer = match pipe.answer() {
                Err(Error::Refused {
                    code: code @ (ErrorCode::CursorExpired | ErrorCode::FeedBehind),
                    ..
                }) if !report.reset => {
                    records.reset_sync(code == ErrorCode::FeedBehind)?;
                    report.reset = true;
                    pipe.send(pull(None))?;
                    continue;
                }
                other => other?,
            };
            report.pages += 1;
            if page.cursor.is_empty() || page.cursor.len() > 256 {
                return Err(Error::BadAnswer {
                    endpoint: Pull::PATH,
                    problem: "the cursor is empty or too long".into(),
                });
            }
            // The next page is on its way while this one is checked and
            // applied.
            if !page.complete {
                pipe.send(pull(Some(page.cursor.clone())))?;
            }
            let mut last_seq = 0;
            let mut heads = Vec::with_capacity(page.records.len());
            for record in page.records {
                if record.seq <= last_seq {
                    return Err(Error::BadAnswer {
                        endpoint: Pull::PATH,
                        problem: "the records are not in sequence order".into(),
                    });
                }
                last_seq = record.seq;
                heads.push(to_head(record).map_err(|problem| Error::BadAnswer {
                    endpoint: Pull::PATH,
                    problem: problem.into(),
                })?);
            }
            let n = heads.len() as u64;
            if n == 0 && !page.complete {
                return Err(Error::BadAnswer {
                    endpoint: Pull::PATH,
                    problem: "an empty page that is not the end".into(),
                });
            }
            records.apply_page(&origin, &heads, &page.cursor, page.complete)?;
            report.pulled += n;
            observer.pulled(app, report.pulled);
            if page.complete {
                return Ok(());
            }
        }
    })
}

impl Agent {
    /// The sync state of each app that has synced on this vault, by name
    /// (nothing is sent; apps that never synced are not opened).
    pub fn sync_status(
        &self,
        vault: &UnlockedVault,
    ) -> Result<Vec<(String, coffer_device::SyncState)>> {
        let mut out = Vec::new();
        for key in vault.setting_keys(SYNCED_APP)? {
            let app = &key[SYNCED_APP.len()..];
            let mut records = vault.app(app)?.records()?;
            out.push((app.to_owned(), records.sync_state()?));
        }
        Ok(out)
    }

    /// One sync round: a check-in (wipe orders first; a whole-device wipe
    /// ends here with [`Error::Wiped`]), purges the server or the policy
    /// ordered, then for each app the held policy's `sync` list names (made
    /// here if missing, with the policy's capabilities), a push of every
    /// pending change and a pull until the feed's end, with the files they
    /// reference. An unreachable server is an error that loses nothing:
    /// everything stays pending. One file that fails on its own is
    /// reported ([`AppSync::file_problems`]) and the round goes on.
    pub fn sync(
        &self,
        vault: UnlockedVault,
        observer: &mut dyn SyncObserver,
    ) -> Result<(SyncReport, UnlockedVault)> {
        vault.finish_purges()?;
        let (check_in, mut vault) = self.check_in(vault)?;
        let enrollment = Enrollment::read(&vault)?;
        let client = self.client(&enrollment.server)?;
        let credentials = Credentials {
            token: Some(&enrollment.token),
            user: None,
        };
        // What the organization said: the device is revoked (nothing syncs,
        // everything synced goes), or the verified policy's list. Without a
        // policy the device can read, it says nothing: nothing syncs and
        // nothing is purged.
        let held = crate::policy::held_policy(&vault)?;
        let (listed, explicit): (Vec<String>, bool) = match (&held, check_in.revoked) {
            (_, true) => (Vec::new(), true),
            (Some(policy), false) => (policy.rules.sync.clone(), true),
            (None, false) => (Vec::new(), false),
        };
        let mut purged = Vec::new();
        for key in vault.setting_keys(SYNCED_APP)? {
            if !explicit {
                break;
            }
            let app = key[SYNCED_APP.len()..].to_owned();
            if listed.contains(&app) {
                continue;
            }
            // Explicit: the device is revoked, or the verified policy no
            // longer lists the app.
            if vault.apps()?.iter().any(|a| a.name == app) {
                vault.purge_app(&app)?;
            }
            vault.set_setting(&format!("{PURGE_UNREPORTED}{app}"), Some(b"1"))?;
            vault.set_setting(&key, None)?;
            // Its unfinished uploads went with its files (and only its
            // own: another app's name may start with this one's).
            let prefix = format!("{UPLOAD}{app}.");
            for upload in vault.setting_keys(&prefix)? {
                if coffer_protocol::files::is_sha256_hex(&upload[prefix.len()..]) {
                    vault.set_setting(&upload, None)?;
                }
            }
            purged.push(app);
        }
        // Reported to the server, now or at a later round: the purge is done
        // either way, and the server's audit trail says when it heard.
        for key in vault.setting_keys(PURGE_UNREPORTED)? {
            let app = key[PURGE_UNREPORTED.len()..].to_owned();
            match client.send(&Purged { app }, credentials) {
                Ok(_) => vault.set_setting(&key, None)?,
                // Refused for good (the server no longer knows of it): said
                // enough.
                Err(e) if e.is_permanent() => vault.set_setting(&key, None)?,
                Err(_) => {}
            }
        }
        let mut apps = Vec::new();
        for app in &listed {
            if !vault.apps()?.iter().any(|a| &a.name == app) {
                vault.add_app(app, coffer_device::Capabilities::none())?;
                if let Some(policy) = crate::policy::held_policy(&vault)? {
                    crate::policy::apply(&mut vault, &policy.rules)?;
                }
            }
            vault.set_setting(&format!("{SYNCED_APP}{app}"), Some(b"1"))?;
            let handle = vault.app(app)?;
            let mut records = handle.records()?;
            let mut report = AppSync {
                app: app.clone(),
                applied: 0,
                duplicates: 0,
                conflicts: 0,
                rejected: Vec::new(),
                pulled: 0,
                pages: 0,
                reset: false,
                files_uploaded: 0,
                bytes_uploaded: 0,
                files_downloaded: 0,
                bytes_downloaded: 0,
                file_problems: Vec::new(),
                state: records.sync_state()?,
            };
            let connect = || self.client(&enrollment.server);
            let mut files = FileSync::new(&vault, app, &client, credentials);
            push_all(
                &connect,
                credentials,
                app,
                &mut records,
                &mut files,
                &mut report,
                observer,
            )?;
            pull_all(
                &connect,
                credentials,
                app,
                &mut records,
                &mut report,
                observer,
            )?;
            // The records are in; their files follow.
            files.download_all(&mut report, observer)?;
            report.state = records.sync_state()?;
            apps.push(report);
        }
        Ok((
            SyncReport {
                check_in,
                apps,
                purged,
            },
            vault,
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_batch_is_named_by_its_content() {
        let op = PushOp {
            collection: "c".into(),
            id: "1".into(),
            revision: Revision::new([3; 16], 4).unwrap(),
            base: None,
            deleted: false,
            body: Some(serde_json::json!({"a": 1})),
            files: Vec::new(),
            author: "alice".into(),
            resolves: Vec::new(),
        };
        let a = batch_of(vec![op.clone()], false);
        let b = batch_of(vec![op.clone()], false);
        assert_eq!(a.batch_id, b.batch_id);
        assert_eq!(a.check(), Ok(()));
        let mut other = op.clone();
        other.body = Some(serde_json::json!({"a": 2}));
        assert_ne!(batch_of(vec![other], false).batch_id, a.batch_id);
        // Pushed again after missing_file: a new name each time (the
        // server would answer the old one from its store), of the same
        // form.
        let again = batch_of(vec![op.clone()], true);
        assert_ne!(again.batch_id, a.batch_id);
        assert_ne!(batch_of(vec![op], true).batch_id, again.batch_id);
        assert_eq!(again.batch_id.len(), a.batch_id.len());
        assert_eq!(again.check(), Ok(()));
    }

    #[test]
    fn the_device_and_the_protocol_agree_on_the_largest_body() {
        assert_eq!(
            wire::MAX_RECORD_BODY,
            coffer_device::store::records::MAX_BODY_LEN
        );
    }

    #[test]
    fn a_hostile_page_is_refused_whole() {
        let record = |body: Option<serde_json::Value>, deleted: bool| wire::PulledRecord {
            collection: "c".into(),
            id: "1".into(),
            seq: 1,
            revision: Revision::new([1; 16], 1).unwrap(),
            deleted,
            body,
            files: Vec::new(),
            author: "a".into(),
            conflicts: Vec::new(),
        };
        assert!(to_head(record(Some(serde_json::json!({"a": 1})), false)).is_ok());
        assert!(to_head(record(None, true)).is_ok());
        assert_eq!(
            to_head(record(None, false)).unwrap_err(),
            "a live record has no body"
        );
        assert_eq!(
            to_head(record(Some(serde_json::json!(1)), true)).unwrap_err(),
            "a deleted record carries a body"
        );
        let mut long = record(None, true);
        long.id = "x".repeat(300);
        assert_eq!(
            to_head(long).unwrap_err(),
            "a collection or record id breaks the naming rule"
        );
    }

    #[test]
    fn a_pulled_file_reference_is_checked_before_it_reaches_the_queue() {
        let good = wire::FileRef {
            name: "photo.jpg".into(),
            sha256: "ab".repeat(32),
            size: 10,
            content_type: Some("image/jpeg".into()),
        };
        let record = |files: Vec<wire::FileRef>, deleted: bool| wire::PulledRecord {
            collection: "c".into(),
            id: "1".into(),
            seq: 1,
            revision: Revision::new([1; 16], 1).unwrap(),
            deleted,
            body: (!deleted).then(|| serde_json::json!({"a": 1})),
            files,
            author: "a".into(),
            conflicts: Vec::new(),
        };
        let head = to_head(record(vec![good.clone()], false)).unwrap();
        assert_eq!(head.head.files[0].sha256, "ab".repeat(32));
        for (bad, why) in [
            (
                wire::FileRef {
                    sha256: "AB".repeat(32),
                    ..good.clone()
                },
                "a file reference breaks the protocol's rules",
            ),
            (
                wire::FileRef {
                    name: String::new(),
                    ..good.clone()
                },
                "a file reference breaks the protocol's rules",
            ),
            (
                wire::FileRef {
                    name: "../x".repeat(100),
                    ..good.clone()
                },
                "a file reference breaks the protocol's rules",
            ),
            (
                wire::FileRef {
                    size: coffer_protocol::files::MAX_FILE_SIZE + 1,
                    ..good.clone()
                },
                "a file reference breaks the protocol's rules",
            ),
            (
                wire::FileRef {
                    content_type: Some("text/plain\n".into()),
                    ..good.clone()
                },
                "a file reference breaks the protocol's rules",
            ),
        ] {
            assert_eq!(to_head(record(vec![bad], false)).unwrap_err(), why);
        }
        assert_eq!(
            to_head(record(vec![good.clone(), good.clone()], false)).unwrap_err(),
            "a record names one file twice"
        );
        assert_eq!(
            to_head(record(vec![good.clone()], true)).unwrap_err(),
            "a deleted record references files"
        );
        assert_eq!(
            to_head(record(vec![good; wire::MAX_FILES + 1], false)).unwrap_err(),
            "too many files"
        );
    }

    #[test]
    fn the_device_and_the_protocol_agree_on_the_files_of_a_record() {
        assert_eq!(wire::MAX_FILES, coffer_device::store::records::MAX_FILES);
    }
}
