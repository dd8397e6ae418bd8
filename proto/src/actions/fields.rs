//! How an action reads its own fields of a campaign step: the campaign-file parser implements
//! [`StepFields`] (it knows the file, the lines and the field paths), each action asks for the
//! fields it takes and checks them.

use std::collections::BTreeMap;
use std::time::Duration;

/// A campaign step's fields as the file gave them. Every getter answers `Ok(None)` for an
/// absent field and an error naming the field's line for one of the wrong type.
pub trait StepFields {
    /// An error that names the file, the line and the field.
    type Error;
    fn string(&self, name: &str) -> Result<Option<String>, Self::Error>;
    fn bool(&self, name: &str) -> Result<Option<bool>, Self::Error>;
    fn integer(&self, name: &str) -> Result<Option<i64>, Self::Error>;
    fn strings(&self, name: &str) -> Result<Option<Vec<String>>, Self::Error>;
    /// A table of string values, e.g. `env = { KEY = "value" }`.
    fn string_table(&self, name: &str) -> Result<Option<BTreeMap<String, String>>, Self::Error>;
    /// A duration written like `"90s"` or `"1h 30m"`.
    fn duration(&self, name: &str) -> Result<Option<Duration>, Self::Error>;
    /// Whether the step has the field at all.
    fn has(&self, name: &str) -> bool;
    /// An error about field `name` (at its line when present, else the step's).
    fn invalid(&self, name: &str, message: String) -> Self::Error;
    /// An error about the step as a whole.
    fn step_error(&self, message: String) -> Self::Error;
    /// The error for a required field the step lacks.
    fn missing(&self, name: &str) -> Self::Error;

    /// A required, non-empty string field, trimmed.
    fn required(&self, name: &str) -> Result<String, Self::Error> {
        match self.string(name)? {
            Some(text) if !text.trim().is_empty() => Ok(text.trim().to_owned()),
            Some(_) => Err(self.invalid(name, "must not be empty".to_owned())),
            None => Err(self.missing(name)),
        }
    }

    /// An optional field spelled as one of a closed set of words.
    fn choice<T>(
        &self,
        name: &str,
        parse: impl Fn(&str) -> Option<T>,
        expected: &str,
    ) -> Result<Option<T>, Self::Error> {
        match self.string(name)? {
            None => Ok(None),
            Some(text) => parse(text.trim())
                .map(Some)
                .ok_or_else(|| self.invalid(name, format!("{text:?} is not {expected}"))),
        }
    }

    /// A program and its arguments (no shell): required, starting with an absolute path.
    fn argv(&self, name: &str) -> Result<Vec<String>, Self::Error> {
        match self.strings(name)? {
            None => Err(self.invalid(
                name,
                "is required: the program and its arguments, e.g. [\"/usr/local/bin/lab-health\"]"
                    .to_owned(),
            )),
            Some(argv) if argv.first().is_none_or(|p| !p.starts_with('/')) => Err(self.invalid(
                name,
                "must start with the absolute path of a program (no shell is involved)".to_owned(),
            )),
            Some(argv) => Ok(argv),
        }
    }

    /// A duration in whole seconds that fits the wire's `u32`.
    fn seconds(&self, name: &str) -> Result<Option<u32>, Self::Error> {
        match self.duration(name)? {
            None => Ok(None),
            Some(d) => u32::try_from(d.as_secs())
                .map(Some)
                .map_err(|_| self.invalid(name, "is too long".to_owned())),
        }
    }
}
