//! `automate-out`: where the sender's outbound scripts will run. For now it passes each
//! message on unchanged.

use crate::runner::{StageContext, StageError, StageWorker, forward};
use async_trait::async_trait;
use chorus_core::event::StageEvent;
use chorus_core::topics::Stage;
use chorus_log::Outgoing;

/// The `automate-out` stage.
pub struct AutomateOut;

#[async_trait]
impl StageWorker for AutomateOut {
    async fn process(
        &mut self,
        ctx: &StageContext,
        events: Vec<StageEvent>,
    ) -> Result<Vec<Outgoing>, StageError> {
        Ok(events
            .into_iter()
            .filter_map(|e| forward(ctx, Stage::AutomateOut, e))
            .collect())
    }
}
