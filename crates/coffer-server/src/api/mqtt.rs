//! `POST /v1/device/mqtt`: a device's access to the MQTT broker
//! (docs/protocol.md, section 10; [`crate::mqtt`]).

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::post;
use axum::{Json, Router};
use coffer_protocol::mqtt::{MqttAccess, RequestMqttAccess};
use coffer_protocol::{Endpoint, ErrorCode};
use serde_json::json;

use super::{record, ApiError, AppState, DevicePrincipal};
use crate::mqtt::MqttError;
use crate::store::BrokerState;

pub(super) fn routes(router: Router<AppState>) -> Router<AppState> {
    router.route(RequestMqttAccess::PATH, post(access))
}

/// A new broker client password for the calling device (revoked devices
/// and suspended organizations are refused by the extractor; a device
/// ordered wiped is refused here: it must check in and carry out the order).
async fn access(
    State(state): State<AppState>,
    device: DevicePrincipal,
) -> Result<Json<MqttAccess>, ApiError> {
    let Some(mqtt) = state.mqtt.as_ref() else {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            ErrorCode::MqttNotConfigured,
            "this server has no MQTT broker: deliver over HTTP",
        ));
    };
    let (org_id, device_id) = (device.device.org_id, device.device.id);
    if state.store.mqtt_standing(org_id, device_id).await? != Some(BrokerState::Enabled) {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            ErrorCode::WipePending,
            "a wipe of this device is pending: check in first",
        ));
    }
    let access = mqtt
        .issue(&state.store, org_id, device_id)
        .await
        .map_err(|e| match e {
            MqttError::Store(e) => ApiError::from(e),
            MqttError::NotAllowed => ApiError::new(
                StatusCode::FORBIDDEN,
                ErrorCode::WipePending,
                "the device may no longer deliver: check in first",
            ),
            other => {
                tracing::warn!(error = %other, "MQTT: could not issue a device's access");
                let mut refused = ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    ErrorCode::MqttBrokerUnavailable,
                    "the MQTT broker cannot be reached now: deliver over HTTP, or ask again later",
                );
                refused.retry_after = Some(30);
                refused
            }
        })?;
    record(
        &state,
        Some(org_id),
        format!("device:{device_id}"),
        "mqtt_access_issued",
        json!({"device_id": device_id, "username": access.username}),
    )
    .await?;
    Ok(Json(access))
}
