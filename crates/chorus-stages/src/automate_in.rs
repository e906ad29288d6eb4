//! `automate-in`: where the recipients' inbound scripts and auto-reply will run. For
//! now it passes each message on unchanged.

use crate::runner::{StageContext, StageError, StageWorker, forward};
use async_trait::async_trait;
use chorus_core::event::StageEvent;
use chorus_core::topics::Stage;
use chorus_log::Outgoing;

/// The `automate-in` stage.
pub struct AutomateIn;

#[async_trait]
impl StageWorker for AutomateIn {
    async fn process(
        &mut self,
        ctx: &StageContext,
        events: Vec<StageEvent>,
    ) -> Result<Vec<Outgoing>, StageError> {
        Ok(events
            .into_iter()
            .filter_map(|e| forward(ctx, Stage::AutomateIn, e))
            .collect())
    }
}
