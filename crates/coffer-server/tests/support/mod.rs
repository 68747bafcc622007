//! Test support: a throwaway PostgreSQL server, and a running `coffer serve`.

#![allow(dead_code)]

pub mod postgres;

use coffer_server::{ServeConfig, Server};
use tokio::sync::oneshot;

/// A server running in this process on a free loopback port.
pub struct Running {
    pub base: String,
    pub setup_token: Option<String>,
    pub backend: &'static str,
    stop: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Running {
    pub async fn start(database_url: &str) -> Running {
        Self::start_with_ttl(database_url, coffer_server::DEFAULT_SESSION_TTL).await
    }

    pub async fn start_with_ttl(database_url: &str, session_ttl: std::time::Duration) -> Running {
        let server = Server::bind(&ServeConfig {
            listen: "127.0.0.1:0".parse().unwrap(),
            database_url: database_url.to_owned(),
            force_plain: false,
            session_ttl,
        })
        .await
        .unwrap();
        let base = format!("http://{}", server.local_addr().unwrap());
        let setup_token = server.setup_token().map(str::to_owned);
        let backend = server.backend();
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            server
                .run(async {
                    let _ = stopped.await;
                })
                .await
                .unwrap();
        });
        Running {
            base,
            setup_token,
            backend,
            stop: Some(stop),
            task: Some(task),
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            task.await.unwrap();
        }
    }
}
