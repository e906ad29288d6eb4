//! Names of the event log's topics, all under one configurable prefix.

use crate::NodeId;

/// The message stages, in the order a user's message visits them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Stage {
    /// The sender's outbound scripts.
    AutomateOut,
    /// Sequence numbers and persistence.
    Store,
    /// The recipients' inbound scripts and auto-reply.
    AutomateIn,
    /// Fan-out to the gateway nodes that hold the recipients' sessions.
    Route,
}

impl Stage {
    /// Every stage, in pipeline order.
    pub const ALL: [Stage; 4] = [
        Self::AutomateOut,
        Self::Store,
        Self::AutomateIn,
        Self::Route,
    ];

    /// The stage's name, as used in topics, consumer groups, metrics and `--roles`.
    pub fn name(self) -> &'static str {
        match self {
            Self::AutomateOut => "automate-out",
            Self::Store => "store",
            Self::AutomateIn => "automate-in",
            Self::Route => "route",
        }
    }

    /// Parses a stage name.
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|s| s.name() == name)
    }
}

/// Topic names under a prefix (default `chorus`).
#[derive(Clone, Debug)]
pub struct Topics {
    prefix: String,
}

impl Topics {
    /// Topics named `<prefix>.…`.
    pub fn new(prefix: impl Into<String>) -> Self {
        Self {
            prefix: prefix.into(),
        }
    }

    /// `<prefix>.stage.<stage>`: the input of a message stage.
    pub fn stage(&self, stage: Stage) -> String {
        format!("{}.stage.{}", self.prefix, stage.name())
    }

    /// `<prefix>.deliver.<node>`: events for the sessions a gateway node holds.
    pub fn deliver(&self, node: &NodeId) -> String {
        format!("{}.deliver.{}", self.prefix, node)
    }

    /// `<prefix>.dead-letter`: events no stage could process, kept for inspection.
    pub fn dead_letter(&self) -> String {
        format!("{}.dead-letter", self.prefix)
    }

    /// `<prefix>.control`: cluster-wide notices (cache invalidation), read by every node.
    pub fn control(&self) -> String {
        format!("{}.control", self.prefix)
    }

    /// `<prefix>.jobs.requests`: submitted jobs, keyed by job id, read by the workers.
    pub fn jobs_requests(&self) -> String {
        format!("{}.jobs.requests", self.prefix)
    }

    /// `<prefix>.jobs.results`: how each job ended, keyed by job id.
    pub fn jobs_results(&self) -> String {
        format!("{}.jobs.results", self.prefix)
    }

    /// `<prefix>.observer.decisions`: the observer's measurements and scaling decisions.
    pub fn observer_decisions(&self) -> String {
        format!("{}.observer.decisions", self.prefix)
    }
}

impl Default for Topics {
    fn default() -> Self {
        Self::new("chorus")
    }
}
