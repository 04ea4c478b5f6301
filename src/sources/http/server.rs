//! The HTTP/1.1 server around the routes: a bounded number of connections, a deadline for each request's headers
//! (idle keep-alive connections included), and a deadline on graceful shutdown. Bodies have their own deadline and
//! byte budget where they are read (`read_body`).

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

use crate::app::AppState;
use crate::config::Connections;

/// Serves `state` on `listener` until `shutdown` completes, then waits for open connections up to the shutdown
/// deadline and closes the rest.
pub async fn run(listener: TcpListener, state: AppState, shutdown: impl Future<Output = ()>) {
    let limits: Connections = state.config.connections;
    let routes = super::routes(state);
    let open = Arc::new(Semaphore::new(limits.max_connections));
    let graceful = GracefulShutdown::new();
    let mut refused: u64 = 0;
    tokio::pin!(shutdown);
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            () = &mut shutdown => break,
        };
        let stream = match accepted {
            Ok((stream, _)) => stream,
            Err(e) => {
                // Out of file descriptors and the like: pause rather than spin.
                tracing::warn!(error = %e, "cannot accept a connection");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let Ok(permit) = open.clone().try_acquire_owned() else {
            refused += 1;
            if refused.is_power_of_two() {
                tracing::warn!(
                    limit = limits.max_connections,
                    refused,
                    "too many connections (SEGMENT_DELTA_MAX_CONNECTIONS); closing new ones"
                );
            }
            drop(stream);
            continue;
        };
        let _ = stream.set_nodelay(true);
        let service = TowerToHyperService::new(warp::service(routes.clone()));
        let conn = hyper::server::conn::http1::Builder::new()
            .timer(TokioTimer::new())
            .header_read_timeout(limits.header_timeout)
            .serve_connection(TokioIo::new(stream), service);
        let conn = graceful.watch(conn);
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "connection ended with an error");
            }
            drop(permit);
        });
    }
    drop(listener);
    let open_now = graceful.count();
    if open_now > 0 {
        tracing::info!(connections = open_now, "waiting for open connections");
    }
    tokio::select! {
        () = graceful.shutdown() => {}
        () = tokio::time::sleep(limits.shutdown_timeout) => {
            tracing::warn!(timeout_ms = limits.shutdown_timeout.as_millis() as u64,
                "connections still open at the shutdown deadline (SEGMENT_DELTA_SHUTDOWN_TIMEOUT_MS) are closed");
        }
    }
}
