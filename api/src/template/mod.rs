//! The `PromptTemplate` engine: one place that both the operator (to validate) and the sidecar (to
//! render) use, so a template the operator calls valid renders the same way in the sidecar.
//!
//! Templates are handlebars, in strict mode, without HTML escaping, with the built-in helpers
//! only. Go text/template field references (`{{.Name}}`, `{{ .Name }}`) are accepted and read as
//! `{{Name}}`; any other Go action is an error that says to use handlebars syntax.
//!
//! This module is the engine's API (compile, render, errors) and the checks on declarations and
//! values; `go_compat` rewrites and rejects Go syntax before parsing, `checker` walks the parsed
//! template.

use std::collections::HashSet;
use std::fmt;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::LazyLock;

use handlebars::template::Template;
use handlebars::{Context, Handlebars, Output, RenderContext, RenderErrorReason, Renderable};
use serde_json::{Map, Number, Value};

use crate::PromptTemplateSpec;
use crate::prompt_template::{MAX_TEMPLATE_BYTES, MAX_VARIABLES, TemplateVariable, VariableType};

mod checker;
mod go_compat;
#[cfg(test)]
mod tests;

use checker::{Checker, Scope, largest_literal};
use go_compat::go_compat;

/// Largest rendered prompt, in bytes: `{{#each}}` and repeated large values cannot exhaust memory.
pub const MAX_RENDERED_BYTES: usize = 1 << 20;
/// Deepest nesting of blocks, or of `(`, `[`, `{` within one tag: handlebars' parser recurses.
pub const MAX_NESTING: usize = 32;
/// Most steps (elements evaluated, loop turns) a template may take: empty loops write nothing.
pub const MAX_RENDER_STEPS: u64 = 1 << 22;

/// The helpers handlebars 6 registers by default (its `has_helper` is not public).
const BUILTIN_HELPERS: [&str; 17] = [
    "and", "each", "eq", "gt", "gte", "if", "len", "log", "lookup", "lt", "lte", "ne", "not", "or",
    "raw", "unless", "with",
];
/// Names handlebars reads as something other than a variable, besides the helpers' names.
const KEYWORDS: [&str; 6] = ["as", "else", "false", "null", "this", "true"];

/// The one registry: strict, unescaped, built-in helpers only, no partials, shared by all templates.
static REGISTRY: LazyLock<Handlebars<'static>> = LazyLock::new(|| {
    let mut registry = Handlebars::new();
    registry.set_strict_mode(true);
    registry.register_escape_fn(handlebars::no_escape);
    registry
});

/// A place in the template source, as editors count: lines and columns (characters) from 1.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Position {
    /// The line, from 1.
    pub line: usize,
    /// The column in characters, from 1.
    pub column: usize,
}

impl Position {
    /// Where byte `offset` of `source` is.
    fn of(source: &str, offset: usize) -> Self {
        let before = source.get(..offset).unwrap_or(source);
        let line_start = before.rfind('\n').map_or(0, |newline| newline + 1);
        Self {
            line: before.matches('\n').count() + 1,
            column: before.get(line_start..).map_or(0, |s| s.chars().count()) + 1,
        }
    }
}

impl fmt::Display for Position {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "line {}, column {}", self.line, self.column)
    }
}

/// Why a template does not compile or a rendering fails; each message says what to change.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TemplateError {
    /// `spec.template` is over [`MAX_TEMPLATE_BYTES`].
    #[error("the template is {size} bytes, over the limit of {limit}: shorten it")]
    TemplateTooLarge { size: usize, limit: usize },
    /// `spec.systemPrompt` is over [`MAX_TEMPLATE_BYTES`].
    #[error("the system prompt is {size} bytes, over the limit of {limit}: shorten it")]
    SystemPromptTooLarge { size: usize, limit: usize },
    /// More than [`MAX_VARIABLES`] variables.
    #[error("{count} variables are declared, over the limit of {limit}: drop some")]
    TooManyVariables { count: usize, limit: usize },
    /// A variable name that is not an identifier.
    #[error(
        "variable name {name:?} is not valid: use 1 to 63 letters, digits and `_`, not starting with a digit"
    )]
    InvalidVariableName { name: String },
    /// Two variables with one name.
    #[error("variable {name} is declared more than once: keep one declaration")]
    DuplicateVariable { name: String },
    /// A variable named like a built-in helper or a keyword, which handlebars would not read as it.
    #[error(
        "variable name {name} is reserved (a handlebars helper or keyword, so `{{{{{name}}}}}` would not read the variable): rename it"
    )]
    ReservedVariableName { name: String },
    /// A required variable with a default, which could never be used.
    #[error(
        "variable {name} is required and has a default: drop `default` or set `required: false`"
    )]
    RequiredWithDefault { name: String },
    /// A default that does not match the variable's type.
    #[error("variable {name} has type {expected} but its default {default:?} is not one: {}", default_fix(.expected))]
    InvalidDefault {
        name: String,
        expected: &'static str,
        default: String,
    },
    /// A Go text/template action other than a plain `{{.Name}}`.
    #[error(
        "`{action}` at {position} is a Go template action; only `{{{{.Name}}}}` field references are accepted from Go templates, write everything else in handlebars syntax: {hint} (to keep the tag as literal text, write `\\{{{{` or wrap it in `{{{{{{{{raw}}}}}}}}…{{{{{{{{/raw}}}}}}}}`)"
    )]
    GoAction {
        action: String,
        position: Position,
        hint: &'static str,
    },
    /// Handlebars could not parse the template.
    #[error("template syntax error{}: {message}", at(.position.as_ref()))]
    Syntax {
        message: String,
        position: Option<Position>,
    },
    /// Blocks or brackets nested deeper than [`MAX_NESTING`].
    #[error("blocks or brackets nest more than {limit} deep at {position}: flatten the template")]
    NestingTooDeep { position: Position, limit: usize },
    /// A partial or decorator, which could load or define other templates.
    #[error("{construct}{} is not supported: write the text inline", at(.position.as_ref()))]
    Unsupported {
        construct: &'static str,
        position: Option<Position>,
    },
    /// A call of a helper handlebars does not have built in.
    #[error(
        "unknown helper {name:?}{}: only the built-in helpers exist ({}); to test a variable write `{{{{#if Name}}}}…{{{{/if}}}}`",
        at(.position.as_ref()),
        builtin_helpers()
    )]
    UnknownHelper {
        name: String,
        position: Option<Position>,
    },
    /// A reference to a variable the spec does not declare.
    #[error(
        "template uses {{{{{name}}}}}{} but declares no variable {name}; declared: {}. Fix the spelling or declare it in spec.variables",
        at(.position.as_ref()),
        list(.declared)
    )]
    UndeclaredVariable {
        name: String,
        position: Option<Position>,
        declared: Vec<String>,
    },
    /// `{{Name.field}}`: variables are strings, numbers or booleans, without fields.
    #[error(
        "template uses {{{{{path}}}}}{} but variable {name} is a plain value without fields: write {{{{{name}}}}}",
        at(.position.as_ref())
    )]
    FieldOfVariable {
        path: String,
        name: String,
        position: Option<Position>,
    },
    /// Nested loops that could take more than [`MAX_RENDER_STEPS`] steps.
    #[error(
        "the template may take up to {steps} steps to render (nested {{{{#each}}}} loops), over the limit of {limit}: loop over fewer items or nest fewer loops"
    )]
    TooMuchWork { steps: u64, limit: u64 },
    /// Required variables without a value in the request.
    #[error("missing required variable(s): {}; pass a value for each", list(.names))]
    MissingVariables { names: Vec<String> },
    /// Values for variables the template does not declare (usually a typo).
    #[error(
        "unknown variable(s) given: {}; the template declares: {}. Fix the spelling or drop them",
        list(.names),
        list(.declared)
    )]
    UnknownVariables {
        names: Vec<String>,
        declared: Vec<String>,
    },
    /// A value that does not match its variable's type.
    #[error("variable {name} is a {expected}, but the value given is {got}: {}", value_fix(.expected))]
    WrongType {
        name: String,
        expected: &'static str,
        got: String,
    },
    /// The rendering grew past [`MAX_RENDERED_BYTES`].
    #[error(
        "the rendered prompt is over {limit} bytes: pass smaller values, or repeat them less in the template"
    )]
    OutputTooLarge { limit: usize },
    /// Handlebars failed while rendering (in strict mode, a name with no value at that point).
    #[error("rendering failed{}: {message}", at(.position.as_ref()))]
    Render {
        message: String,
        position: Option<Position>,
    },
}

/// " at line L, column C" when the place is known, so messages read the same with or without it.
fn at(position: Option<&Position>) -> String {
    position.map_or_else(String::new, |p| format!(" at {p}"))
}

/// Names for a message, comma-separated.
fn list(names: &[String]) -> String {
    if names.is_empty() {
        "none".to_owned()
    } else {
        names.join(", ")
    }
}

/// The built-in helpers, for the unknown-helper message.
fn builtin_helpers() -> String {
    BUILTIN_HELPERS.join(", ")
}

/// Whether `name` is one of handlebars' built-in helpers.
fn is_helper(name: &str) -> bool {
    BUILTIN_HELPERS.contains(&name)
}

/// How to write a default of each type.
fn default_fix(expected: &str) -> &'static str {
    match expected {
        "number" => "write a number such as 3 or 2.5",
        "boolean" => "write true or false",
        _ => "write text",
    }
}

/// What a value of each type may be.
fn value_fix(expected: &str) -> &'static str {
    match expected {
        "number" => "pass a JSON number, or a string holding one (3, 2.5, \"3\")",
        "boolean" => "pass true or false (or the strings \"true\", \"false\")",
        _ => "pass a JSON string (quote numbers and booleans: \"3\", \"true\")",
    }
}

/// A declared variable, its default already converted to its type.
#[derive(Debug, Clone)]
struct Variable {
    name: String,
    type_: VariableType,
    required: bool,
    default: Option<Value>,
}

/// A checked, parsed template: compile once (operator or sidecar cache), render per request.
#[derive(Debug, Clone)]
pub struct CompiledTemplate {
    template: Template,
    system_prompt: Option<String>,
    variables: Vec<Variable>,
    unused: Vec<String>,
}

/// The result of a rendering: what to send to the model.
#[derive(Debug, Clone, PartialEq)]
pub struct Rendered {
    /// `spec.systemPrompt`, as written: it is not a template.
    pub system_prompt: Option<String>,
    /// The rendered `spec.template`.
    pub prompt: String,
}

impl CompiledTemplate {
    /// Checks the spec (variables, defaults, syntax, references, cost) and parses the template.
    ///
    /// # Errors
    ///
    /// Any [`TemplateError`] up to [`TemplateError::TooMuchWork`]: the spec is not valid.
    pub fn compile(spec: &PromptTemplateSpec) -> Result<Self, TemplateError> {
        if spec.template.len() > MAX_TEMPLATE_BYTES {
            return Err(TemplateError::TemplateTooLarge {
                size: spec.template.len(),
                limit: MAX_TEMPLATE_BYTES,
            });
        }
        if let Some(system) = &spec.system_prompt
            && system.len() > MAX_TEMPLATE_BYTES
        {
            return Err(TemplateError::SystemPromptTooLarge {
                size: system.len(),
                limit: MAX_TEMPLATE_BYTES,
            });
        }
        let variables = declare(&spec.variables)?;
        let names: HashSet<&str> = variables.iter().map(|v| v.name.as_str()).collect();
        let source = go_compat(&spec.template, &names)?;
        let template = parse(&source)?;

        let mut checker = Checker {
            variables: &variables,
            used: HashSet::new(),
            whole_root: false,
            collection_bound: u64::try_from(MAX_VARIABLES.max(largest_literal(&template)))
                .unwrap_or(u64::MAX),
        };
        let steps = checker.template(&template, &Scope::default())?;
        if steps > MAX_RENDER_STEPS {
            return Err(TemplateError::TooMuchWork {
                steps,
                limit: MAX_RENDER_STEPS,
            });
        }
        let unused = variables
            .iter()
            .filter(|v| !checker.whole_root && !checker.used.contains(&v.name))
            .map(|v| v.name.clone())
            .collect();
        Ok(Self {
            template,
            system_prompt: spec.system_prompt.clone(),
            variables,
            unused,
        })
    }

    /// Renders with the request's values: checks them, fills in defaults, caps the output size.
    ///
    /// # Errors
    ///
    /// [`TemplateError::MissingVariables`], [`TemplateError::UnknownVariables`] and
    /// [`TemplateError::WrongType`] for bad values, [`TemplateError::OutputTooLarge`], and
    /// [`TemplateError::Render`] when strict mode finds a name without a value.
    pub fn render(&self, variables: &Map<String, Value>) -> Result<Rendered, TemplateError> {
        let mut unknown: Vec<String> = variables
            .keys()
            .filter(|name| !self.variables.iter().any(|v| &v.name == *name))
            .cloned()
            .collect();
        if !unknown.is_empty() {
            unknown.sort();
            return Err(TemplateError::UnknownVariables {
                names: unknown,
                declared: self.variables.iter().map(|v| v.name.clone()).collect(),
            });
        }
        let missing: Vec<String> = self
            .variables
            .iter()
            .filter(|v| v.required && variables.get(&v.name).is_none_or(Value::is_null))
            .map(|v| v.name.clone())
            .collect();
        if !missing.is_empty() {
            return Err(TemplateError::MissingVariables { names: missing });
        }

        let mut data = Map::new();
        for variable in &self.variables {
            let value = match variables.get(&variable.name) {
                None | Some(Value::Null) => variable
                    .default
                    .clone()
                    .unwrap_or_else(|| Value::String(String::new())),
                Some(given) => typed_value(variable, given)?,
            };
            data.insert(variable.name.clone(), value);
        }

        let context = Context::from(Value::Object(data));
        let mut output = LimitedOutput {
            text: String::new(),
            limit: MAX_RENDERED_BYTES,
            exceeded: false,
        };
        // A handlebars bug must fail this one request, not take the sidecar down.
        let result = catch_unwind(AssertUnwindSafe(|| {
            let mut render_context = RenderContext::new(None);
            self.template
                .render(&REGISTRY, &context, &mut render_context, &mut output)
        }));
        match result {
            _ if output.exceeded => Err(TemplateError::OutputTooLarge {
                limit: MAX_RENDERED_BYTES,
            }),
            Ok(Ok(())) => Ok(Rendered {
                system_prompt: self.system_prompt.clone(),
                prompt: output.text,
            }),
            Ok(Err(error)) => Err(render_error(&error)),
            Err(_) => Err(TemplateError::Render {
                message: "the template engine failed on this template; simplify it".to_owned(),
                position: None,
            }),
        }
    }

    /// Declared variables the template never uses: not an error, but worth a warning.
    #[must_use]
    pub fn unused_variables(&self) -> &[String] {
        &self.unused
    }
}

/// Converts a handlebars render error into ours, explaining strict mode's missing-value error.
fn render_error(error: &handlebars::RenderError) -> TemplateError {
    let position = error
        .line_no
        .zip(error.column_no)
        .map(|(line, column)| Position { line, column });
    let message = match error.reason() {
        RenderErrorReason::MissingVariable(path) => format!(
            "{{{{{}}}}} has no value there (strict mode): inside {{{{#each}}}} and {{{{#with}}}} names refer to the current item; reach template variables as {{{{@root.Name}}}}",
            path.as_deref().unwrap_or("this")
        ),
        other => other.to_string(),
    };
    TemplateError::Render { message, position }
}

/// The rendering's sink: stops handlebars with an error once the text would pass the limit.
struct LimitedOutput {
    text: String,
    limit: usize,
    exceeded: bool,
}

impl Output for LimitedOutput {
    fn write(&mut self, segment: &str) -> std::io::Result<()> {
        if self.text.len().saturating_add(segment.len()) > self.limit {
            self.exceeded = true;
            return Err(std::io::Error::other("rendered prompt too large"));
        }
        self.text.push_str(segment);
        Ok(())
    }
}

/// Whether `name` matches [`crate::prompt_template::VARIABLE_NAME_PATTERN`] (and its length).
fn is_variable_name(name: &str) -> bool {
    let mut bytes = name.bytes();
    name.len() <= 63
        && bytes
            .next()
            .is_some_and(|b| b.is_ascii_alphabetic() || b == b'_')
        && bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

/// The name a message uses for a type.
fn type_name(type_: VariableType) -> &'static str {
    match type_ {
        VariableType::String => "string",
        VariableType::Number => "number",
        VariableType::Boolean => "boolean",
    }
}

/// A number as JSON writes it (no NaN, no infinity), spaces around allowed.
fn parse_number(text: &str) -> Option<Number> {
    text.trim().parse().ok()
}

/// `true` or `false`, exactly.
fn parse_bool(text: &str) -> Option<bool> {
    match text {
        "true" => Some(true),
        "false" => Some(false),
        _ => None,
    }
}

/// Checks the declarations: names, uniqueness, required-or-default, defaults against types.
fn declare(declared: &[TemplateVariable]) -> Result<Vec<Variable>, TemplateError> {
    if declared.len() > MAX_VARIABLES {
        return Err(TemplateError::TooManyVariables {
            count: declared.len(),
            limit: MAX_VARIABLES,
        });
    }
    let mut seen = HashSet::new();
    let mut variables = Vec::with_capacity(declared.len());
    for decl in declared {
        let name = decl.name.clone();
        if !is_variable_name(&name) {
            return Err(TemplateError::InvalidVariableName { name });
        }
        if !seen.insert(decl.name.as_str()) {
            return Err(TemplateError::DuplicateVariable { name });
        }
        if is_helper(&name) || KEYWORDS.contains(&name.as_str()) {
            return Err(TemplateError::ReservedVariableName { name });
        }
        if decl.required && decl.default.is_some() {
            return Err(TemplateError::RequiredWithDefault { name });
        }
        let default = match &decl.default {
            None => None,
            Some(text) => Some(
                match decl.type_ {
                    VariableType::String => Some(Value::String(text.clone())),
                    VariableType::Number => parse_number(text).map(Value::Number),
                    VariableType::Boolean => parse_bool(text).map(Value::Bool),
                }
                .ok_or_else(|| TemplateError::InvalidDefault {
                    name: name.clone(),
                    expected: type_name(decl.type_),
                    default: text.clone(),
                })?,
            ),
        };
        variables.push(Variable {
            name,
            type_: decl.type_,
            required: decl.required,
            default,
        });
    }
    Ok(variables)
}

/// A request's value checked against the variable's type, as the template will see it.
fn typed_value(variable: &Variable, given: &Value) -> Result<Value, TemplateError> {
    let typed = match (variable.type_, given) {
        (VariableType::String, Value::String(_))
        | (VariableType::Number, Value::Number(_))
        | (VariableType::Boolean, Value::Bool(_)) => Some(given.clone()),
        (VariableType::Number, Value::String(text)) => parse_number(text).map(Value::Number),
        (VariableType::Boolean, Value::String(text)) => parse_bool(text).map(Value::Bool),
        _ => None,
    };
    typed.ok_or_else(|| TemplateError::WrongType {
        name: variable.name.clone(),
        expected: type_name(variable.type_),
        got: describe(given),
    })
}

/// A short description of a JSON value for a message (strings cut, so a 1 MiB diff is not echoed).
fn describe(value: &Value) -> String {
    match value {
        Value::Null => "null".to_owned(),
        Value::Bool(b) => format!("the boolean {b}"),
        Value::Number(n) => format!("the number {n}"),
        Value::String(s) if s.chars().count() > 40 => {
            format!("the string {:?}…", s.chars().take(40).collect::<String>())
        }
        Value::String(s) => format!("the string {s:?}"),
        Value::Array(_) => "an array".to_owned(),
        Value::Object(_) => "an object".to_owned(),
    }
}

/// Handlebars' parse, its errors turned into ours; a parser panic becomes an error too, since
/// templates come from any namespace's users and must not crash the operator.
fn parse(source: &str) -> Result<Template, TemplateError> {
    match catch_unwind(|| Template::compile(source)) {
        Ok(Ok(template)) => Ok(template),
        Ok(Err(error)) => Err(TemplateError::Syntax {
            message: error.reason().to_string(),
            position: error.pos().map(|(line, column)| Position { line, column }),
        }),
        Err(_) => Err(TemplateError::Syntax {
            message: "handlebars could not parse the template; check that every tag is closed"
                .to_owned(),
            position: None,
        }),
    }
}
