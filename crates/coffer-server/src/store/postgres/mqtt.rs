//! The PostgreSQL side of [`crate::store::mqtt`]: the shared statements.

use super::{pg, PostgresStore};
use crate::store::mqtt::{
    out_of_step_sql, standing_sql, BrokerState, OutOfStep, CONFIRM_SQL, FORGET_SQL, NOTE_SQL,
};
use crate::store::StoreError;

impl PostgresStore {
    pub(in crate::store) async fn mqtt_standing(
        &self,
        org_id: i64,
        device_id: i64,
    ) -> Result<Option<BrokerState>, StoreError> {
        let op = "reading a device's standing";
        let client = self.client(op).await?;
        Ok(client
            .query_opt(&standing_sql(), &[&device_id, &org_id])
            .await
            .map_err(pg(op))?
            .map(|r| BrokerState::from_db(r.get(0))))
    }

    pub(in crate::store) async fn mqtt_note(
        &self,
        org_id: i64,
        device_id: i64,
        now: i64,
        state: BrokerState,
    ) -> Result<(), StoreError> {
        let op = "noting an MQTT client";
        let client = self.client(op).await?;
        client
            .execute(NOTE_SQL, &[&device_id, &org_id, &now, &state.as_str()])
            .await
            .map_err(pg(op))?;
        Ok(())
    }

    pub(in crate::store) async fn mqtt_confirm(
        &self,
        device_id: i64,
        was: BrokerState,
        now: BrokerState,
    ) -> Result<bool, StoreError> {
        let op = "confirming an MQTT client";
        let client = self.client(op).await?;
        let changed = if now == BrokerState::Deleted {
            client
                .execute(FORGET_SQL, &[&device_id, &was.as_str()])
                .await
        } else {
            client
                .execute(CONFIRM_SQL, &[&now.as_str(), &device_id, &was.as_str()])
                .await
        };
        Ok(changed.map_err(pg(op))? > 0)
    }

    pub(in crate::store) async fn mqtt_out_of_step(
        &self,
        limit: i64,
    ) -> Result<Vec<OutOfStep>, StoreError> {
        let op = "listing MQTT clients out of step";
        let client = self.client(op).await?;
        Ok(client
            .query(&out_of_step_sql(), &[&limit])
            .await
            .map_err(pg(op))?
            .iter()
            .map(|r| OutOfStep {
                device_id: r.get(0),
                org_id: r.get(1),
                broker: BrokerState::from_db(r.get(2)),
                desired: BrokerState::from_db(r.get(3)),
            })
            .collect())
    }
}
