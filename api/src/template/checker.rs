//! Checks on the parsed template: every reference a declared variable, only built-in helpers, no
//! partials or decorators, and the most steps a rendering may take.

use std::collections::HashSet;

use handlebars::template::{BlockParam, HelperTemplate, Parameter, Template, TemplateElement};
use handlebars::{Path, PathSeg};
use serde_json::Value;

use super::{Position, TemplateError, Variable, is_helper};

/// Where a name is resolved: inside how many `each`/`with` blocks, with which block params.
#[derive(Debug, Clone, Default)]
pub(super) struct Scope {
    depth: usize,
    block_params: Vec<String>,
}

/// Walks the parsed template: references, helpers, unsupported constructs, and render cost.
pub(super) struct Checker<'a> {
    pub(super) variables: &'a [Variable],
    pub(super) used: HashSet<String>,
    /// The template reads the whole variable object (`{{#each this}}`, `{{@root}}`).
    pub(super) whole_root: bool,
    /// Most items one `{{#each}}` over something other than a literal may visit.
    pub(super) collection_bound: u64,
}

impl Checker<'_> {
    /// Checks a template's elements; returns the steps it may take to render.
    pub(super) fn template(
        &mut self,
        template: &Template,
        scope: &Scope,
    ) -> Result<u64, TemplateError> {
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
pub(super) fn largest_literal(template: &Template) -> usize {
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
