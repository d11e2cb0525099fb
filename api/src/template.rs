//! The `PromptTemplate` engine: one place that both the operator (to validate) and the sidecar (to
//! render) use, so a template the operator calls valid renders the same way in the sidecar.
//!
//! Templates are handlebars, in strict mode, without HTML escaping, with the built-in helpers
//! only. Go text/template field references (`{{.Name}}`, `{{ .Name }}`) are accepted and read as
//! `{{Name}}`; any other Go action is an error that says to use handlebars syntax.

use std::collections::HashSet;
use std::fmt;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::LazyLock;

use handlebars::template::{BlockParam, HelperTemplate, Parameter, Template, TemplateElement};
use handlebars::{
    Context, Handlebars, Output, Path, PathSeg, RenderContext, RenderErrorReason, Renderable,
};
use serde_json::{Map, Number, Value};

use crate::PromptTemplateSpec;
use crate::prompt_template::{MAX_TEMPLATE_BYTES, MAX_VARIABLES, TemplateVariable, VariableType};

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

// ---------------------------------------------------------------------------------------------
// Go compatibility, by a scan of the source that skips what handlebars does not read as tags.
// ---------------------------------------------------------------------------------------------

/// What to write instead of each kind of Go action.
mod hint {
    pub const IF: &str = "`{{#if Name}}…{{else}}…{{/if}}`";
    pub const RANGE: &str = "`{{#each Items}}…{{/each}}`";
    pub const WITH: &str = "`{{#with Name}}…{{/with}}`";
    pub const END: &str = "close blocks with `{{/if}}`, `{{/each}}` or `{{/with}}`";
    pub const TEMPLATE: &str =
        "named templates and partials are not supported: write the text inline";
    pub const COMMENT: &str = "`{{!-- comment --}}`";
    pub const TRIM: &str = "trim whitespace with `~`: `{{~Name~}}`";
    pub const PIPELINE: &str =
        "there are no pipelines: call a built-in helper, `{{helper Name}}`, e.g. `{{len Name}}`";
    pub const VARIABLE: &str = "there are no `$` variables: name loop items with `{{#each Items as |item|}}{{item}}{{/each}}`";
    pub const FIELD: &str = "write a variable as `{{Name}}` (or `{{.Name}}`), with no fields";
    pub const OTHER: &str = "`{{Name}}`, `{{#if Name}}…{{/if}}`, `{{#each Items}}…{{/each}}`";
}

/// Rewrites each Go `{{.Name}}` / `{{ .Name }}` to `{{ Name}}` / `{{  Name }}` (the dot becomes a
/// space, so positions in later errors stay true), rejects other Go actions, and bounds nesting
/// before handlebars' recursive parser sees the text. Raw blocks, comments and `\{{` are skipped,
/// as handlebars does not read them as tags; Markdown code fences are plain text to handlebars,
/// so a `{{.Diff}}` inside a diff fence is a placeholder like any other.
fn go_compat(source: &str, declared: &HashSet<&str>) -> Result<String, TemplateError> {
    let bytes = source.as_bytes();
    let mut dots = Vec::new();
    let mut depth = 0;
    let mut from = 0;
    while let Some(start) = find(bytes, from, b"{{") {
        let rest = bytes.get(start..).unwrap_or_default();
        let next = if backslashes_before(bytes, start) == 1 {
            // `\{{` and `\{{{{` are literal text.
            Some(start + if rest.starts_with(b"{{{{") { 4 } else { 2 })
        } else if rest.starts_with(b"{{{{") {
            raw_block_end(bytes, start)
        } else if rest.starts_with(b"{{!--") {
            find(bytes, start + 5, b"--}}")
                .map(|end| end + 4)
                .or_else(|| find(bytes, start + 3, b"}}").map(|end| end + 2))
        } else if rest.starts_with(b"{{!") {
            find(bytes, start + 3, b"}}").map(|end| end + 2)
        } else if let Some(end) = tag_end(bytes, start + 2) {
            check_tag(source, start, end, declared, &mut dots, &mut depth)?;
            Some(end + 2)
        } else {
            None
        };
        // Something left open: handlebars reports it, with its position.
        let Some(next) = next else { break };
        from = next;
    }
    let mut rewritten = source.to_owned();
    for dot in dots {
        rewritten.replace_range(dot..=dot, " ");
    }
    Ok(rewritten)
}

/// The first `needle` at or after `from`.
fn find(haystack: &[u8], from: usize, needle: &[u8]) -> Option<usize> {
    haystack
        .get(from..)?
        .windows(needle.len())
        .position(|window| window == needle)
        .map(|i| from + i)
}

/// How many `\` directly precede byte `at`: one escapes a `{{`, two or more do not.
fn backslashes_before(bytes: &[u8], at: usize) -> usize {
    bytes
        .get(..at)
        .unwrap_or_default()
        .iter()
        .rev()
        .take_while(|&&b| b == b'\\')
        .count()
}

/// Where the raw block `{{{{name}}}}…{{{{/name}}}}` opening at `start` ends.
fn raw_block_end(bytes: &[u8], start: usize) -> Option<usize> {
    let open_end = find(bytes, start + 4, b"}}}}")? + 4;
    if bytes.get(start + 4) == Some(&b'/') {
        return Some(open_end);
    }
    let mut from = open_end;
    let close = loop {
        let candidate = find(bytes, from, b"{{{{")?;
        if backslashes_before(bytes, candidate) != 1 {
            break candidate;
        }
        from = candidate + 4;
    };
    Some(find(bytes, close + 4, b"}}}}")? + 4)
}

/// Where the tag whose content starts at `from` closes (the `}}`), skipping string literals.
fn tag_end(bytes: &[u8], from: usize) -> Option<usize> {
    Unquoted::new(bytes, from)
        .find(|&(i, b, _)| b == b'}' && bytes.get(i + 1) == Some(&b'}'))
        .map(|(i, _, _)| i)
}

/// Characters after which a new token (and so a string literal) may start inside a tag.
fn is_separator(b: u8) -> bool {
    b.is_ascii_whitespace() || b"([{,:=~#^&>*|/".contains(&b)
}

/// The bytes of a tag outside string literals, each with whether it starts a token.
struct Unquoted<'a> {
    bytes: &'a [u8],
    pos: usize,
    token_start: bool,
}

impl<'a> Unquoted<'a> {
    fn new(bytes: &'a [u8], from: usize) -> Self {
        Self {
            bytes,
            pos: from,
            token_start: true,
        }
    }
}

impl Iterator for Unquoted<'_> {
    type Item = (usize, u8, bool);

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            let at = self.pos;
            let b = *self.bytes.get(at)?;
            let token_start = self.token_start;
            self.pos += 1;
            if token_start && (b == b'"' || b == b'\'') {
                while let Some(&c) = self.bytes.get(self.pos) {
                    self.pos += if c == b'\\' { 2 } else { 1 };
                    if c == b {
                        break;
                    }
                }
                self.token_start = false;
                continue;
            }
            self.token_start = is_separator(b);
            return Some((at, b, token_start));
        }
    }
}

/// Checks one `{{…}}` tag (`start` is its `{{`, `end` its `}}`): a Go field is queued for
/// rewriting, another Go action is an error, and block and bracket nesting is counted.
fn check_tag(
    source: &str,
    start: usize,
    end: usize,
    declared: &HashSet<&str>,
    dots: &mut Vec<usize>,
    depth: &mut usize,
) -> Result<(), TemplateError> {
    let content = source.get(start + 2..end).unwrap_or_default();
    if let Some(name) = content.trim().strip_prefix('.')
        && is_variable_name(name)
    {
        dots.push(start + 2 + content.len() - content.trim_start().len());
        return Ok(());
    }
    if let Some(hint) = go_action(content, declared) {
        let tag = source.get(start..end + 2).unwrap_or_default();
        let mut action: String = tag.chars().take(60).collect();
        if action.len() < tag.len() {
            action.push('…');
        }
        return Err(TemplateError::GoAction {
            action,
            position: Position::of(source, start),
            hint,
        });
    }
    let too_deep = || TemplateError::NestingTooDeep {
        position: Position::of(source, start),
        limit: MAX_NESTING,
    };
    let opener = content.trim_start().trim_start_matches('~').trim_start();
    if opener.starts_with('#') {
        *depth += 1;
        if *depth > MAX_NESTING {
            return Err(too_deep());
        }
    } else if opener.starts_with('/') {
        *depth = depth.saturating_sub(1);
    }
    let mut brackets = 0usize;
    for (_, b, _) in Unquoted::new(content.as_bytes(), 0) {
        match b {
            b'(' | b'[' | b'{' => {
                brackets += 1;
                if brackets > MAX_NESTING {
                    return Err(too_deep());
                }
            }
            b')' | b']' | b'}' => brackets = brackets.saturating_sub(1),
            _ => {}
        }
    }
    Ok(())
}

/// If the tag content is Go text/template syntax, what to write instead.
fn go_action(content: &str, declared: &HashSet<&str>) -> Option<&'static str> {
    let bytes = content.as_bytes();
    // Go's trim markers need a space: `{{- ` and ` -}}`.
    let trim_left =
        bytes.first() == Some(&b'-') && bytes.get(1).is_some_and(u8::is_ascii_whitespace);
    let trim_right = bytes.last() == Some(&b'-')
        && bytes
            .len()
            .checked_sub(2)
            .and_then(|i| bytes.get(i))
            .is_some_and(u8::is_ascii_whitespace);
    let mut inner = content.trim();
    if trim_left {
        inner = inner.get(1..).unwrap_or_default().trim_start();
    }
    if trim_right {
        inner = inner
            .get(..inner.len().saturating_sub(1))
            .unwrap_or_default()
            .trim_end();
    }
    if inner.starts_with("/*") {
        return Some(hint::COMMENT);
    }

    let (mut field, mut pipeline, mut variable) = (false, false, false);
    let mut in_block_params = false;
    for (i, b, token_start) in Unquoted::new(bytes, 0) {
        let next = bytes.get(i + 1).copied();
        match b {
            b'.' if token_start && !matches!(next, Some(b'.' | b'/')) => field = true,
            b'$' if token_start => variable = true,
            b':' if next == Some(b'=') => variable = true,
            b'|' if in_block_params => in_block_params = false,
            b'|' => {
                let before = content.get(..i).unwrap_or_default().trim_end();
                if before.ends_with(" as") || before.ends_with("\tas") || before.ends_with("\nas") {
                    in_block_params = true;
                } else {
                    pipeline = true;
                }
            }
            _ => {}
        }
    }

    let word_end = inner
        .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .unwrap_or(inner.len());
    let word = inner.get(..word_end).unwrap_or_default();
    let has_args = word_end < inner.len();
    let go_keyword = match word {
        "end" => !has_args && !declared.contains(word),
        "range" | "define" | "template" | "block" => has_args && !declared.contains(word),
        // Handlebars' own helpers, but only as blocks: `{{#if …}}`, not `{{if …}}`.
        "if" | "with" | "each" | "unless" => has_args,
        _ => false,
    };
    if !(go_keyword || trim_left || trim_right || field || pipeline || variable) {
        return None;
    }
    Some(match word {
        "if" | "else" | "unless" => hint::IF,
        "range" | "each" => hint::RANGE,
        "with" => hint::WITH,
        "end" => hint::END,
        "define" | "template" | "block" => hint::TEMPLATE,
        _ if trim_left || trim_right => hint::TRIM,
        _ if pipeline || matches!(word, "printf" | "print" | "println" | "index" | "slice") => {
            hint::PIPELINE
        }
        _ if variable => hint::VARIABLE,
        _ if field => hint::FIELD,
        _ => hint::OTHER,
    })
}

// ---------------------------------------------------------------------------------------------
// Checks on the parsed template.
// ---------------------------------------------------------------------------------------------

/// Where a name is resolved: inside how many `each`/`with` blocks, with which block params.
#[derive(Debug, Clone, Default)]
struct Scope {
    depth: usize,
    block_params: Vec<String>,
}

/// Walks the parsed template: references, helpers, unsupported constructs, and render cost.
struct Checker<'a> {
    variables: &'a [Variable],
    used: HashSet<String>,
    /// The template reads the whole variable object (`{{#each this}}`, `{{@root}}`).
    whole_root: bool,
    /// Most items one `{{#each}}` over something other than a literal may visit.
    collection_bound: u64,
}

impl Checker<'_> {
    /// Checks a template's elements; returns the steps it may take to render.
    fn template(&mut self, template: &Template, scope: &Scope) -> Result<u64, TemplateError> {
        let mut steps = 0u64;
        for (i, element) in template.elements.iter().enumerate() {
            let position = template.mapping.get(i).map(|m| Position {
                line: m.0,
                column: m.1,
            });
            steps = steps.saturating_add(self.element(element, scope, position)?);
        }
        Ok(steps)
    }

    fn element(
        &mut self,
        element: &TemplateElement,
        scope: &Scope,
        position: Option<Position>,
    ) -> Result<u64, TemplateError> {
        match element {
            TemplateElement::RawString(_) | TemplateElement::Comment(_) => Ok(1),
            TemplateElement::Expression(ht) | TemplateElement::HtmlExpression(ht) => {
                self.expression(ht, scope, position)?;
                Ok(1)
            }
            TemplateElement::HelperBlock(ht) => self.block(ht, scope, position),
            TemplateElement::PartialExpression(_) | TemplateElement::PartialBlock(_) => {
                Err(TemplateError::Unsupported {
                    construct: "a partial (`{{> name}}`)",
                    position,
                })
            }
            TemplateElement::DecoratorExpression(_) | TemplateElement::DecoratorBlock(_) => {
                Err(TemplateError::Unsupported {
                    construct: "a decorator (`{{* name}}`, `{{#* inline}}`)",
                    position,
                })
            }
            _ => Err(TemplateError::Unsupported {
                construct: "this kind of tag",
                position,
            }),
        }
    }

    /// `{{Name}}`, `{{helper args}}` or a subexpression `(helper args)`.
    fn expression(
        &mut self,
        ht: &HelperTemplate,
        scope: &Scope,
        position: Option<Position>,
    ) -> Result<(), TemplateError> {
        if ht.params.is_empty() && ht.hash.is_empty() {
            return match &ht.name {
                Parameter::Name(name) if is_helper(name) => Ok(()),
                Parameter::Name(name) => self.variable(name, &[], name, position),
                other => self.parameter(other, scope, position),
            };
        }
        Self::helper(ht, position)?;
        self.arguments(ht, scope, position)
    }

    /// A block `{{#helper args}}…{{else}}…{{/helper}}`; `each` and `with` enter a new context.
    fn block(
        &mut self,
        ht: &HelperTemplate,
        scope: &Scope,
        position: Option<Position>,
    ) -> Result<u64, TemplateError> {
        let name = Self::helper(ht, position)?;
        self.arguments(ht, scope, position)?;
        let enters = name == "each" || name == "with";
        let mut inner = scope.clone();
        if enters {
            inner.depth += 1;
            inner
                .block_params
                .extend(block_param_names(ht.block_param.as_ref()));
        }
        let body = match &ht.template {
            Some(t) => self.template(t, &inner)?,
            None => 0,
        };
        let inverse = match &ht.inverse {
            Some(t) => self.template(t, scope)?,
            None => 0,
        };
        let turns = if name == "each" {
            self.iterations(ht.params.first())
        } else {
            1
        };
        // Each turn of a loop costs a step of its own, so an empty body still counts.
        Ok(turns
            .saturating_mul(body.saturating_add(1))
            .saturating_add(inverse)
            .saturating_add(1))
    }

    /// The helper a tag calls, which must be a built-in one.
    fn helper(ht: &HelperTemplate, position: Option<Position>) -> Result<&str, TemplateError> {
        match ht.name.as_name() {
            Some(name) if is_helper(name) => Ok(name),
            name => Err(TemplateError::UnknownHelper {
                name: name.unwrap_or("(expression)").to_owned(),
                position,
            }),
        }
    }

    fn arguments(
        &mut self,
        ht: &HelperTemplate,
        scope: &Scope,
        position: Option<Position>,
    ) -> Result<(), TemplateError> {
        for parameter in ht.params.iter().chain(ht.hash.values()) {
            self.parameter(parameter, scope, position)?;
        }
        Ok(())
    }

    fn parameter(
        &mut self,
        parameter: &Parameter,
        scope: &Scope,
        position: Option<Position>,
    ) -> Result<(), TemplateError> {
        match parameter {
            Parameter::Path(path) => self.path(path, scope, position),
            Parameter::Subexpression(sub) => match sub.as_element() {
                TemplateElement::Expression(ht) => self.expression(ht, scope, position),
                _ => Ok(()),
            },
            _ => Ok(()),
        }
    }

    /// A path: a template variable when it resolves at the root, else a loop item's field.
    fn path(
        &mut self,
        path: &Path,
        scope: &Scope,
        position: Option<Position>,
    ) -> Result<(), TemplateError> {
        // `@index`, `@key` and the like are the loop's own.
        let Path::Relative((segments, raw)) = path else {
            return Ok(());
        };
        let bare = raw
            .trim_start_matches("this.")
            .trim_start_matches("this/")
            .trim_start_matches("./");
        let from_root = bare == "@root" || bare.starts_with("@root.") || bare.starts_with("@root/");
        let ruled = segments
            .iter()
            .take_while(|s| matches!(s, PathSeg::Ruled(_)))
            .count();
        let ups = ruled.saturating_sub(usize::from(from_root));
        let names: Vec<&str> = segments
            .iter()
            .skip(ruled)
            .filter_map(|s| match s {
                PathSeg::Named(name) => Some(name.as_str()),
                _ => None,
            })
            .collect();
        let first = names.first().copied();
        if !from_root
            && ups == 0
            && first.is_some_and(|n| scope.block_params.iter().any(|p| p == n))
        {
            return Ok(());
        }
        if !from_root && ups < scope.depth {
            return Ok(());
        }
        match first {
            None => {
                self.whole_root = true;
                Ok(())
            }
            Some(name) => self.variable(name, names.get(1..).unwrap_or_default(), raw, position),
        }
    }

    /// A root-level reference `name` (then `fields`) must be a declared variable, without fields.
    fn variable(
        &mut self,
        name: &str,
        fields: &[&str],
        raw: &str,
        position: Option<Position>,
    ) -> Result<(), TemplateError> {
        if !self.variables.iter().any(|v| v.name == name) {
            return Err(TemplateError::UndeclaredVariable {
                name: name.to_owned(),
                position,
                declared: self.variables.iter().map(|v| v.name.clone()).collect(),
            });
        }
        if !fields.is_empty() {
            return Err(TemplateError::FieldOfVariable {
                path: raw.to_owned(),
                name: name.to_owned(),
                position,
            });
        }
        self.used.insert(name.to_owned());
        Ok(())
    }

    /// How many turns `{{#each x}}` may take: a literal's length, else the bound for any value.
    fn iterations(&self, over: Option<&Parameter>) -> u64 {
        let count = |n: usize| u64::try_from(n).unwrap_or(u64::MAX);
        match over {
            Some(Parameter::Literal(Value::Array(items))) => count(items.len()),
            Some(Parameter::Literal(Value::Object(fields))) => count(fields.len()),
            None | Some(Parameter::Name(_) | Parameter::Literal(_)) => 0,
            Some(_) => self.collection_bound,
        }
    }
}

/// The names a block binds with `as |item index|`.
fn block_param_names(params: Option<&BlockParam>) -> Vec<String> {
    let names: Vec<&Parameter> = match params {
        Some(BlockParam::Single(a)) => vec![a],
        Some(BlockParam::Pair((a, b))) => vec![a, b],
        _ => Vec::new(),
    };
    names
        .into_iter()
        .filter_map(Parameter::as_name)
        .map(str::to_owned)
        .collect()
}

/// The longest array or object among the template's literals (at any depth): no value a
/// template can loop over is larger, since variables themselves are plain values.
fn largest_literal(template: &Template) -> usize {
    fn in_value(value: &Value) -> usize {
        match value {
            Value::Array(items) => items.iter().map(in_value).fold(items.len(), usize::max),
            Value::Object(fields) => fields.values().map(in_value).fold(fields.len(), usize::max),
            _ => 0,
        }
    }
    fn in_parameter(parameter: &Parameter) -> usize {
        match parameter {
            Parameter::Literal(value) => in_value(value),
            Parameter::Subexpression(sub) => match sub.as_element() {
                TemplateElement::Expression(ht) => in_helper(ht),
                _ => 0,
            },
            _ => 0,
        }
    }
    fn in_helper(ht: &HelperTemplate) -> usize {
        let own = ht
            .params
            .iter()
            .chain(ht.hash.values())
            .chain(std::iter::once(&ht.name))
            .map(in_parameter)
            .max()
            .unwrap_or(0);
        let nested = ht
            .template
            .iter()
            .chain(ht.inverse.iter())
            .map(largest_literal)
            .max()
            .unwrap_or(0);
        own.max(nested)
    }
    template
        .elements
        .iter()
        .map(|element| match element {
            TemplateElement::Expression(ht)
            | TemplateElement::HtmlExpression(ht)
            | TemplateElement::HelperBlock(ht) => in_helper(ht),
            _ => 0,
        })
        .max()
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    /// The `code-review` `PromptTemplate` of the README.
    fn code_review() -> PromptTemplateSpec {
        serde_json::from_value(json!({
            "systemPrompt": "You are a senior engineer. Be direct and specific.",
            "template": "Review this diff focusing on {{.Focus}}:\n\n```diff\n{{.Diff}}\n```\n",
            "variables": [
                {"name": "Diff", "type": "string", "required": true},
                {"name": "Focus", "type": "string", "default": "security and correctness"}
            ],
            "modelEndpointRef": {"name": "claude-haiku"}
        }))
        .unwrap()
    }

    /// A spec with `template` and `variables` (JSON as in the CRD).
    fn spec(template: &str, variables: Value) -> PromptTemplateSpec {
        let mut spec = json!({"template": template, "modelEndpointRef": {"name": "m"}});
        spec["variables"] = variables;
        serde_json::from_value(spec).unwrap()
    }

    fn vars(value: Value) -> Map<String, Value> {
        match value {
            Value::Object(map) => map,
            other => panic!("not an object: {other}"),
        }
    }

    fn compile_err(template: &str, variables: Value) -> TemplateError {
        CompiledTemplate::compile(&spec(template, variables)).unwrap_err()
    }

    fn render(template: &str, variables: Value, values: Value) -> Result<String, TemplateError> {
        CompiledTemplate::compile(&spec(template, variables))
            .unwrap()
            .render(&vars(values))
            .map(|r| r.prompt)
    }

    #[test]
    fn seed_code_review_renders_the_readme_curl() {
        let compiled = CompiledTemplate::compile(&code_review()).unwrap();
        assert!(compiled.unused_variables().is_empty());
        // The body of the README's `curl … /render/ai-workloads/code-review -d '…'`.
        let body: Value = serde_json::from_str(
            r#"{"variables":{"Diff":"- password = \"hunter2\"\n+ password = os.getenv(\"PASSWORD\")","Focus":"security"}}"#,
        )
        .unwrap();
        let rendered = compiled.render(&vars(body["variables"].clone())).unwrap();
        assert_eq!(
            rendered,
            Rendered {
                system_prompt: Some("You are a senior engineer. Be direct and specific.".into()),
                prompt: "Review this diff focusing on security:\n\n```diff\n- password = \"hunter2\"\n+ password = os.getenv(\"PASSWORD\")\n```\n".into(),
            }
        );
    }

    #[test]
    fn default_applies_when_focus_is_omitted_or_null() {
        let compiled = CompiledTemplate::compile(&code_review()).unwrap();
        let expected =
            "Review this diff focusing on security and correctness:\n\n```diff\n+ x\n```\n";
        for values in [
            json!({"Diff": "+ x"}),
            json!({"Diff": "+ x", "Focus": null}),
        ] {
            assert_eq!(compiled.render(&vars(values)).unwrap().prompt, expected);
        }
    }

    #[test]
    fn missing_required_variable_is_named() {
        let compiled = CompiledTemplate::compile(&code_review()).unwrap();
        for values in [json!({"Focus": "style"}), json!({"Diff": null})] {
            let err = compiled.render(&vars(values)).unwrap_err();
            assert_eq!(
                err,
                TemplateError::MissingVariables {
                    names: vec!["Diff".into()]
                }
            );
            assert!(
                err.to_string()
                    .contains("missing required variable(s): Diff"),
                "{err}"
            );
        }
    }

    #[test]
    fn typo_in_template_is_a_compile_error_naming_it() {
        let mut spec = code_review();
        spec.template = "Review this diff focusing on {{.Focuss}}:\n{{.Diff}}".into();
        let err = CompiledTemplate::compile(&spec).unwrap_err();
        assert_eq!(
            err.to_string(),
            "template uses {{Focuss}} at line 1, column 30 but declares no variable Focuss; \
             declared: Diff, Focus. Fix the spelling or declare it in spec.variables"
        );
        // Also inside a handlebars condition, and with `{{ .Name }}` spacing.
        spec.template = "{{#if Focuss}}x{{/if}}{{ .Diff }}".into();
        let err = CompiledTemplate::compile(&spec).unwrap_err();
        assert!(
            matches!(err, TemplateError::UndeclaredVariable { ref name, .. } if name == "Focuss")
        );
    }

    #[test]
    fn go_actions_other_than_fields_are_clear_errors() {
        let declared = json!([{"name": "X", "type": "boolean"}, {"name": "Items"}]);
        for (template, hint) in [
            ("{{if .X}}yes{{end}}", hint::IF),
            ("{{ if .X }}yes{{ else }}no{{ end }}", hint::IF),
            ("{{range .Items}}{{.}}{{end}}", hint::RANGE),
            ("{{with .X}}{{.}}{{end}}", hint::WITH),
            ("{{- .X -}}", hint::TRIM),
            ("{{.X | printf \"%q\"}}", hint::PIPELINE),
            ("{{printf \"%s\" .X}}", hint::PIPELINE),
            ("{{.}}", hint::FIELD),
            ("{{.X.Y}}", hint::FIELD),
            ("{{$x := .X}}", hint::VARIABLE),
            ("{{/* note */}}", hint::COMMENT),
            ("{{template \"other\" .}}", hint::TEMPLATE),
            ("{{#if X}}a{{end}}", hint::END),
        ] {
            let err = compile_err(template, declared.clone());
            let TemplateError::GoAction { hint: got, .. } = &err else {
                panic!("{template}: {err:?}");
            };
            assert_eq!(*got, hint, "{template}");
            let message = err.to_string();
            assert!(message.contains("is a Go template action"), "{message}");
            assert!(
                message.contains("write everything else in handlebars syntax"),
                "{message}"
            );
        }
        // Helm-style text meant literally must be escaped or put in a raw block.
        let err = compile_err("```yaml\nimage: {{ .Values.image }}\n```", declared.clone());
        assert!(
            matches!(
                err,
                TemplateError::GoAction {
                    hint: hint::FIELD,
                    ..
                }
            ),
            "{err:?}"
        );
        let literal =
            "```yaml\nimage: \\{{ .Values.image }} {{{{raw}}}}{{ .Values.tag }}{{{{/raw}}}}\n```";
        assert_eq!(
            render(literal, declared.clone(), json!({})).unwrap(),
            "```yaml\nimage: {{ .Values.image }} {{ .Values.tag }}\n```"
        );
        let err = compile_err("line one\n  {{if .X}}yes{{end}}", declared);
        assert_eq!(
            err.to_string(),
            "`{{if .X}}` at line 2, column 3 is a Go template action; only `{{.Name}}` field \
             references are accepted from Go templates, write everything else in handlebars \
             syntax: `{{#if Name}}…{{else}}…{{/if}}` (to keep the tag as literal text, write \
             `\\{{` or wrap it in `{{{{raw}}}}…{{{{/raw}}}}`)"
        );
    }

    #[test]
    fn handlebars_if_works() {
        let template = "{{#if Focus}}Focus on {{Focus}}.{{else}}General review.{{/if}} {{Diff}}";
        let declared = json!([{"name": "Diff", "required": true}, {"name": "Focus"}]);
        assert_eq!(
            render(
                template,
                declared.clone(),
                json!({"Diff": "d", "Focus": "tests"})
            )
            .unwrap(),
            "Focus on tests. d"
        );
        // An optional variable without default is empty text, so false in `#if`.
        assert_eq!(
            render(template, declared, json!({"Diff": "d"})).unwrap(),
            "General review. d"
        );
        // Built-in helpers in subexpressions, and `{{else if}}` chains.
        let template = "{{#if (eq Mode \"fast\")}}F{{else if (eq Mode \"slow\")}}S{{else}}?{{/if}}";
        let declared = json!([{"name": "Mode", "required": true}]);
        assert_eq!(
            render(template, declared.clone(), json!({"Mode": "slow"})).unwrap(),
            "S"
        );
        assert_eq!(
            render(template, declared, json!({"Mode": "x"})).unwrap(),
            "?"
        );
    }

    #[test]
    fn number_variables_take_numbers_or_numeric_strings() {
        let template = "{{Count}} {{#if (gt Count 3)}}many{{else}}few{{/if}}";
        let declared = json!([{"name": "Count", "type": "number", "default": "2"}]);
        assert_eq!(
            render(template, declared.clone(), json!({"Count": 5})).unwrap(),
            "5 many"
        );
        assert_eq!(
            render(template, declared.clone(), json!({"Count": " 5 "})).unwrap(),
            "5 many"
        );
        assert_eq!(
            render(template, declared.clone(), json!({"Count": 2.5})).unwrap(),
            "2.5 few"
        );
        assert_eq!(
            render(template, declared.clone(), json!({})).unwrap(),
            "2 few"
        );
        for bad in [json!("five"), json!(true), json!("NaN"), json!([1])] {
            let err = render(template, declared.clone(), json!({"Count": bad})).unwrap_err();
            assert!(
                matches!(&err, TemplateError::WrongType { name, expected: "number", .. } if name == "Count"),
                "{err:?}"
            );
        }
        let err = compile_err(
            "{{Count}}",
            json!([{"name": "Count", "type": "number", "default": "lots"}]),
        );
        assert_eq!(
            err.to_string(),
            "variable Count has type number but its default \"lots\" is not one: write a number such as 3 or 2.5"
        );
    }

    #[test]
    fn boolean_variables_take_true_false_or_their_strings() {
        let template = "{{#if Strict}}strict{{else}}lenient{{/if}} ({{Strict}})";
        let declared = json!([{"name": "Strict", "type": "boolean", "default": "false"}]);
        assert_eq!(
            render(template, declared.clone(), json!({"Strict": true})).unwrap(),
            "strict (true)"
        );
        assert_eq!(
            render(template, declared.clone(), json!({"Strict": "true"})).unwrap(),
            "strict (true)"
        );
        assert_eq!(
            render(template, declared.clone(), json!({"Strict": "false"})).unwrap(),
            "lenient (false)"
        );
        assert_eq!(
            render(template, declared.clone(), json!({})).unwrap(),
            "lenient (false)"
        );
        for bad in [json!("yes"), json!(1), json!("True")] {
            let err = render(template, declared.clone(), json!({"Strict": bad})).unwrap_err();
            assert!(
                matches!(
                    err,
                    TemplateError::WrongType {
                        expected: "boolean",
                        ..
                    }
                ),
                "{err:?}"
            );
        }
        let err = compile_err(
            "{{Strict}}",
            json!([{"name": "Strict", "type": "boolean", "default": "yes"}]),
        );
        assert!(
            matches!(
                err,
                TemplateError::InvalidDefault {
                    expected: "boolean",
                    ..
                }
            ),
            "{err:?}"
        );
    }

    #[test]
    fn string_variables_take_only_strings() {
        let declared = json!([{"name": "Diff", "required": true}]);
        let err = render("{{Diff}}", declared, json!({"Diff": 3})).unwrap_err();
        assert_eq!(
            err.to_string(),
            "variable Diff is a string, but the value given is the number 3: pass a JSON string \
             (quote numbers and booleans: \"3\", \"true\")"
        );
    }

    #[test]
    fn unknown_variables_given_are_errors() {
        let compiled = CompiledTemplate::compile(&code_review()).unwrap();
        let err = compiled
            .render(&vars(json!({"Diff": "d", "Fcous": "x", "Extra": 1})))
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "unknown variable(s) given: Extra, Fcous; the template declares: Diff, Focus. Fix the spelling or drop them"
        );
    }

    #[test]
    fn strict_mode_errors_instead_of_rendering_nothing() {
        // Inside `each`, names are the item's: a missing field is an error, not empty text.
        let err = render("{{#each [{\"a\": 1}]}}{{b}}{{/each}}", json!([]), json!({})).unwrap_err();
        assert!(matches!(err, TemplateError::Render { .. }), "{err:?}");
        assert!(
            err.to_string()
                .contains("{{b}} has no value there (strict mode)"),
            "{err}"
        );
        // A variable read as the item's field fails too, and says how to reach it.
        let declared = json!([{"name": "Diff", "required": true}]);
        let err = render(
            "{{#each [1]}}{{Diff}}{{/each}}",
            declared.clone(),
            json!({"Diff": "d"}),
        )
        .unwrap_err();
        assert!(err.to_string().contains("{{@root.Name}}"), "{err}");
        assert_eq!(
            render(
                "{{#each [1, 2] as |n|}}{{n}}{{@root.Diff}}{{../Diff}} {{/each}}",
                declared,
                json!({"Diff": "d"})
            )
            .unwrap(),
            "1dd 2dd "
        );
    }

    #[test]
    fn values_are_not_html_escaped() {
        let declared = json!([{"name": "Diff", "required": true}]);
        let value = "<script>alert(\"x\" & 'y')</script> `a` = b";
        assert_eq!(
            render(
                "{{Diff}}|{{{Diff}}}|{{.Diff}}",
                declared,
                json!({"Diff": value})
            )
            .unwrap(),
            format!("{value}|{value}|{value}")
        );
    }

    #[test]
    fn template_bomb_hits_the_output_limit() {
        // A million turns of a loop each printing a 100-byte value: 100 MB if nothing stopped it.
        let thousand = format!(
            "[{}]",
            (0..1000)
                .map(|i| i.to_string())
                .collect::<Vec<_>>()
                .join(",")
        );
        let template = format!(
            "{{{{#each {thousand}}}}}{{{{#each {thousand}}}}}{{{{@root.Diff}}}}{{{{/each}}}}{{{{/each}}}}"
        );
        let declared = json!([{"name": "Diff", "required": true}]);
        let err = render(&template, declared, json!({"Diff": "x".repeat(100)})).unwrap_err();
        assert_eq!(
            err,
            TemplateError::OutputTooLarge {
                limit: MAX_RENDERED_BYTES
            }
        );
        // A big value repeated: the same.
        let declared = json!([{"name": "Diff", "required": true}]);
        let repeated = "{{Diff}}".repeat(20);
        let err = render(&repeated, declared, json!({"Diff": "x".repeat(100_000)})).unwrap_err();
        assert_eq!(
            err,
            TemplateError::OutputTooLarge {
                limit: MAX_RENDERED_BYTES
            }
        );
    }

    #[test]
    fn loops_that_print_nothing_are_bounded_at_compile_time() {
        let thousand = format!(
            "[{}]",
            (0..1000)
                .map(|i| i.to_string())
                .collect::<Vec<_>>()
                .join(",")
        );
        let template = format!(
            "{{{{#each {thousand}}}}}{{{{#each {thousand}}}}}{{{{#each {thousand}}}}}{{{{/each}}}}{{{{/each}}}}{{{{/each}}}}"
        );
        let err = compile_err(&template, json!([]));
        assert!(matches!(err, TemplateError::TooMuchWork { .. }), "{err:?}");
        // Loops over something other than a literal are bounded by the largest literal (or 64).
        let template = format!(
            "{{{{#each {thousand}}}}}{{{{#each this}}}}{{{{#each this}}}}{{{{/each}}}}{{{{/each}}}}{{{{/each}}}}"
        );
        let err = compile_err(&template, json!([]));
        assert!(matches!(err, TemplateError::TooMuchWork { .. }), "{err:?}");
    }

    #[test]
    fn deep_nesting_is_an_error_not_a_stack_overflow() {
        let brackets = format!(
            "{{{{#each {}1{}}}}}x{{{{/each}}}}",
            "[".repeat(30_000),
            "]".repeat(30_000)
        );
        assert!(matches!(
            compile_err(&brackets, json!([])),
            TemplateError::NestingTooDeep { .. }
        ));
        let parens = format!(
            "{{{{len {}\"a\"{}}}}}",
            "(len ".repeat(10_000),
            ")".repeat(10_000)
        );
        assert!(matches!(
            compile_err(&parens, json!([])),
            TemplateError::NestingTooDeep { .. }
        ));
        let blocks = format!(
            "{}x{}",
            "{{#if true}}".repeat(3_000),
            "{{/if}}".repeat(3_000)
        );
        let err = compile_err(&blocks, json!([]));
        assert_eq!(
            err,
            TemplateError::NestingTooDeep {
                position: Position {
                    line: 1,
                    column: 1 + 12 * MAX_NESTING
                },
                limit: MAX_NESTING
            }
        );
        // At the limit, it compiles and renders.
        let ok = format!(
            "{}x{}",
            "{{#if true}}".repeat(MAX_NESTING),
            "{{/if}}".repeat(MAX_NESTING)
        );
        assert_eq!(render(&ok, json!([]), json!({})).unwrap(), "x");
    }

    #[test]
    fn raw_blocks_escapes_and_comments_are_not_rewritten() {
        let declared = json!([{"name": "Diff", "required": true}]);
        let template = "{{{{raw}}}}{{.Diff}} {{if .X}}{{{{/raw}}}} \\{{.Diff}} {{!-- {{.Nope}} --}}{{! {{if .X }}[{{.Diff}}]";
        assert_eq!(
            render(template, declared, json!({"Diff": "d"})).unwrap(),
            "{{.Diff}} {{if .X}} {{.Diff}} [d]"
        );
    }

    #[test]
    fn code_fences_are_plain_text() {
        let declared = json!([{"name": "Code", "required": true}]);
        let template = "```go\nfunc f() { return m[\"k\"] }\n{{ .Code }}\n```\n";
        assert_eq!(
            render(template, declared, json!({"Code": "x := {{y}}"})).unwrap(),
            "```go\nfunc f() { return m[\"k\"] }\nx := {{y}}\n```\n"
        );
    }

    #[test]
    fn declarations_are_checked() {
        let err = compile_err(
            "{{X}}",
            json!([{"name": "X", "required": true, "default": "a"}]),
        );
        assert_eq!(err, TemplateError::RequiredWithDefault { name: "X".into() });
        let err = compile_err("{{X}}", json!([{"name": "X"}, {"name": "X"}]));
        assert_eq!(err, TemplateError::DuplicateVariable { name: "X".into() });
        let err = compile_err("{{X}}", json!([{"name": "X"}, {"name": "len"}]));
        assert_eq!(
            err,
            TemplateError::ReservedVariableName { name: "len".into() }
        );
        let err = compile_err("{{X}}", json!([{"name": "X"}, {"name": "true"}]));
        assert_eq!(
            err,
            TemplateError::ReservedVariableName {
                name: "true".into()
            }
        );
        let err = compile_err("{{X}}", json!([{"name": "1X"}]));
        assert_eq!(
            err,
            TemplateError::InvalidVariableName { name: "1X".into() }
        );
        let many: Vec<Value> = (0..=MAX_VARIABLES)
            .map(|i| json!({"name": format!("V{i}")}))
            .collect();
        let err = compile_err("x", Value::Array(many));
        assert!(matches!(err, TemplateError::TooManyVariables { .. }));
        let err = compile_err(&"x".repeat(MAX_TEMPLATE_BYTES + 1), json!([]));
        assert!(matches!(err, TemplateError::TemplateTooLarge { .. }));
    }

    #[test]
    fn unused_variables_are_reported_not_rejected() {
        let declared =
            json!([{"name": "Diff", "required": true}, {"name": "Focus"}, {"name": "Lang"}]);
        let compiled =
            CompiledTemplate::compile(&spec("{{Diff}}{{#if Lang}}{{/if}}", declared)).unwrap();
        assert_eq!(compiled.unused_variables(), ["Focus".to_owned()]);
    }

    #[test]
    fn only_builtin_helpers_and_no_partials() {
        let declared = json!([{"name": "Focus"}]);
        let err = compile_err("{{shout Focus}}", declared.clone());
        assert!(
            matches!(&err, TemplateError::UnknownHelper { name, .. } if name == "shout"),
            "{err:?}"
        );
        let err = compile_err("{{#Focus}}x{{/Focus}}", declared.clone());
        assert!(err.to_string().contains("{{#if Name}}"), "{err}");
        let err = compile_err("{{> header}}", declared.clone());
        assert!(matches!(err, TemplateError::Unsupported { .. }), "{err:?}");
        let err = compile_err("{{#*inline \"p\"}}x{{/inline}}", declared);
        assert!(matches!(err, TemplateError::Unsupported { .. }), "{err:?}");
    }

    #[test]
    fn fields_of_variables_are_errors() {
        let err = compile_err("{{Diff.length}}", json!([{"name": "Diff"}]));
        assert!(
            matches!(err, TemplateError::FieldOfVariable { .. }),
            "{err:?}"
        );
        assert!(err.to_string().contains("write {{Diff}}"), "{err}");
    }

    #[test]
    fn syntax_errors_keep_the_original_position() {
        let err = compile_err(
            "{{.Diff}} and {{#if Diff}}\nnever closed",
            json!([{"name": "Diff"}]),
        );
        let TemplateError::Syntax { position, .. } = &err else {
            panic!("{err:?}");
        };
        assert!(position.is_some(), "{err}");
        // `{{ .Diff }}` became `{{  Diff }}`: same length, so the column is the source's.
        let err = compile_err("{{ .Diff }} {{Diff}", json!([{"name": "Diff"}]));
        assert!(
            matches!(
                err,
                TemplateError::Syntax {
                    position: Some(Position {
                        line: 1,
                        column: 19
                    }),
                    ..
                }
            ),
            "{err}"
        );
    }

    #[test]
    fn system_prompt_is_not_templated() {
        let mut spec = code_review();
        spec.system_prompt = Some("Keep {{.Diff}} and {{#if}} as written.".into());
        let compiled = CompiledTemplate::compile(&spec).unwrap();
        let rendered = compiled.render(&vars(json!({"Diff": "d"}))).unwrap();
        assert_eq!(
            rendered.system_prompt.as_deref(),
            Some("Keep {{.Diff}} and {{#if}} as written.")
        );
    }

    #[test]
    fn builtin_helper_list_matches_handlebars() {
        for name in BUILTIN_HELPERS {
            let template = Template::compile(&format!("{{{{{name} 1 2}}}}")).unwrap();
            let context = Context::from(json!({}));
            let mut output = LimitedOutput {
                text: String::new(),
                limit: 100,
                exceeded: false,
            };
            if let Err(err) = template.render(
                &REGISTRY,
                &context,
                &mut RenderContext::new(None),
                &mut output,
            ) {
                assert!(
                    !matches!(err.reason(), RenderErrorReason::HelperNotFound(_)),
                    "{name}: {err}"
                );
            }
        }
        let template = Template::compile("{{nosuchhelper 1 2}}").unwrap();
        let err = template
            .render(
                &REGISTRY,
                &Context::from(json!({})),
                &mut RenderContext::new(None),
                &mut LimitedOutput {
                    text: String::new(),
                    limit: 100,
                    exceeded: false,
                },
            )
            .unwrap_err();
        assert!(
            matches!(err.reason(), RenderErrorReason::HelperNotFound(_)),
            "{err}"
        );
    }

    #[test]
    fn compiled_templates_are_shareable() {
        fn send_sync<T: Send + Sync>() {}
        send_sync::<CompiledTemplate>();
        send_sync::<TemplateError>();
    }
}
