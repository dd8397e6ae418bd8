//! A campaign step's action: the catalogue's [`StepAction`] (`pitcrew_proto::actions`), whose
//! `{{variables}}` are checked when the file is parsed and rendered per host when a run is
//! created, so the persisted run holds the exact arguments every agent will receive.

pub use pitcrew_proto::actions::StepAction;
pub use pitcrew_proto::actions::health::HealthCheck;

use crate::template::{self, TemplateError, Vars};

/// Checks that every `{{...}}` variable of the action names something pitcrew knows.
pub fn check_templates(action: &StepAction) -> Result<(), TemplateError> {
    let mut copy = action.clone();
    copy.strings_mut()
        .into_iter()
        .try_for_each(|text| template::check(text))
}

/// The action with every variable replaced by its value for one host.
pub fn render(action: &StepAction, vars: &Vars<'_>) -> Result<StepAction, TemplateError> {
    let mut rendered = action.clone();
    for text in rendered.strings_mut() {
        *text = template::render(text, vars)?;
    }
    Ok(rendered)
}
