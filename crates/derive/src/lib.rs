//! `#[derive(Checkpoint)]` for structs (named, tuple, unit). See the `lazarus_state` crate
//! docs for the attributes; this crate only generates code calling its public API.
//!
//! Path to the runtime crate: `::lazarus_state` when expanding inside the Lazarus crates
//! below the facade (they cannot depend on it), `::lazarus::state` everywhere else (user
//! programs depend on the facade), or whatever `#[checkpoint(crate = "...")]` says.
#![deny(missing_docs)]

use proc_macro::TokenStream;
use proc_macro2::{Span, TokenStream as TokenStream2};
use quote::{format_ident, quote, quote_spanned};
use syn::spanned::Spanned;
use syn::{parse_macro_input, Data, DeriveInput, Fields, LitStr};

/// Generates the `Checkpoint` trait (`lazarus::Checkpoint`, defined in `lazarus_state`)
/// for a struct: `save` and `restore` field by field, and an `after_restore` that runs
/// each field's hook and then the struct's own.
///
/// Field attributes: `#[checkpoint(skip)]` (not saved, rebuilt by the hook),
/// `#[checkpoint(serde)]` (saved with serde), `#[checkpoint(rename = "name")]`,
/// `#[checkpoint(replicated)]` (the same on every rank: restorable on another number of
/// ranks). Struct attributes: `#[checkpoint(after_restore = "path::to::fn")]`,
/// `#[checkpoint(replicated)]`, `#[checkpoint(crate = "path")]`. The `Checkpoint`
/// trait's documentation, section "The derive", says what each one does, with an example.
#[proc_macro_derive(Checkpoint, attributes(checkpoint))]
pub fn derive_checkpoint(input: TokenStream) -> TokenStream {
    let input = parse_macro_input!(input as DeriveInput);
    match expand(&input) {
        Ok(ts) => ts.into(),
        Err(e) => e.to_compile_error().into(),
    }
}

/// Crates that sit below the facade in the dependency graph.
const BELOW_FACADE: &[&str] = &[
    "lazarus-state",
    "lazarus-dist",
    "lazarus-coord",
    "lazarus-store",
    "lazarus-net",
    "lazarus-policy",
];

struct StructAttrs {
    krate: Option<syn::Path>,
    after_restore: Option<syn::Path>,
    /// `#[checkpoint(replicated)]` on the struct: every value of it is the same on all ranks.
    replicated: bool,
}

#[derive(PartialEq)]
enum Mode {
    Default,
    Serde,
    Skip,
}

struct FieldPlan {
    access: TokenStream2,
    name: String,
    mode: Mode,
    ty: syn::Type,
    /// `#[checkpoint(replicated)]`: the same value on every rank by construction.
    replicated: bool,
}

fn parse_struct_attrs(input: &DeriveInput) -> syn::Result<StructAttrs> {
    let mut out = StructAttrs {
        krate: None,
        after_restore: None,
        replicated: false,
    };
    for attr in &input.attrs {
        if !attr.path().is_ident("checkpoint") {
            continue;
        }
        attr.parse_nested_meta(|meta| {
            // Each at most once: a second `after_restore` silently replaced the first,
            // whose hook then never ran (found in review).
            if meta.path.is_ident("crate") {
                if out.krate.is_some() {
                    return Err(meta.error("`crate` may appear once"));
                }
                let s: LitStr = meta.value()?.parse()?;
                out.krate = Some(s.parse()?);
                Ok(())
            } else if meta.path.is_ident("after_restore") {
                if out.after_restore.is_some() {
                    return Err(meta.error(
                        "`after_restore` may appear once (call the other hooks from it)",
                    ));
                }
                let s: LitStr = meta.value()?.parse()?;
                out.after_restore = Some(s.parse()?);
                Ok(())
            } else if meta.path.is_ident("replicated") {
                out.replicated = true;
                Ok(())
            } else {
                Err(meta.error("unknown struct attribute; expected `crate = \"..\"`, `after_restore = \"path::to::fn\"` or `replicated`"))
            }
        })?;
    }
    Ok(out)
}

fn parse_field(field: &syn::Field, index: usize) -> syn::Result<FieldPlan> {
    let (access, mut name) = match &field.ident {
        Some(id) => (
            quote!(#id),
            id.to_string().trim_start_matches("r#").to_string(),
        ),
        None => {
            let idx = syn::Index::from(index);
            (quote!(#idx), index.to_string())
        }
    };
    let mut mode = Mode::Default;
    let mut replicated = false;
    let mut renamed = false;
    for attr in &field.attrs {
        if !attr.path().is_ident("checkpoint") {
            continue;
        }
        attr.parse_nested_meta(|meta| {
            if meta.path.is_ident("replicated") {
                if replicated {
                    return Err(meta.error("`replicated` may appear once"));
                }
                replicated = true;
                return Ok(());
            }
            let new_mode = if meta.path.is_ident("skip") {
                Mode::Skip
            } else if meta.path.is_ident("serde") {
                Mode::Serde
            } else if meta.path.is_ident("rename") {
                if renamed {
                    return Err(meta.error("`rename` may appear once"));
                }
                renamed = true;
                let s: LitStr = meta.value()?.parse()?;
                name = s.value();
                if name.is_empty() || name.contains('.') {
                    return Err(meta.error("rename must be non-empty and contain no '.'"));
                }
                return Ok(());
            } else {
                return Err(meta.error(
                    "unknown field attribute; expected `skip`, `serde`, `replicated` or `rename = \"..\"`",
                ));
            };
            if mode != Mode::Default {
                return Err(meta.error("`skip` and `serde` are exclusive and may appear once"));
            }
            mode = new_mode;
            Ok(())
        })?;
    }
    if replicated && mode == Mode::Skip {
        return Err(syn::Error::new(
            field.span(),
            "`replicated` has no effect on a `skip` field (it is not saved)",
        ));
    }
    Ok(FieldPlan {
        access,
        name,
        mode,
        ty: field.ty.clone(),
        replicated,
    })
}

fn runtime_path(attrs: &StructAttrs) -> TokenStream2 {
    if let Some(p) = &attrs.krate {
        return quote!(#p);
    }
    let pkg = std::env::var("CARGO_PKG_NAME").unwrap_or_default();
    if BELOW_FACADE.contains(&pkg.as_str()) {
        quote!(::lazarus_state)
    } else {
        quote!(::lazarus::state)
    }
}

fn expand(input: &DeriveInput) -> syn::Result<TokenStream2> {
    let attrs = parse_struct_attrs(input)?;
    let fields: Vec<FieldPlan> = match &input.data {
        Data::Struct(s) => match &s.fields {
            Fields::Named(f) => f.named.iter().enumerate().map(|(i, f)| parse_field(f, i)).collect::<Result<_, _>>()?,
            Fields::Unnamed(f) => f.unnamed.iter().enumerate().map(|(i, f)| parse_field(f, i)).collect::<Result<_, _>>()?,
            Fields::Unit => Vec::new(),
        },
        _ => {
            return Err(syn::Error::new(
                Span::call_site(),
                "#[derive(Checkpoint)] supports structs only; save an enum as a field with #[checkpoint(serde)]",
            ))
        }
    };
    let mut seen = std::collections::HashSet::new();
    for f in &fields {
        if f.mode != Mode::Skip && !seen.insert(f.name.clone()) {
            return Err(syn::Error::new(
                Span::call_site(),
                format!("two fields are saved under the name `{}`", f.name),
            ));
        }
    }

    let rt = runtime_path(&attrs);
    let ident = &input.ident;
    let mut generics = input.generics.clone();
    if !generics.params.is_empty() {
        let wc = generics.make_where_clause();
        for f in &fields {
            let ty = &f.ty;
            match f.mode {
                Mode::Default => wc.predicates.push(syn::parse_quote!(#ty: #rt::Checkpoint)),
                Mode::Serde => wc.predicates.push(syn::parse_quote!(
                    #ty: #rt::__private::serde::Serialize + #rt::__private::serde::de::DeserializeOwned
                )),
                Mode::Skip => {}
            }
        }
    }
    let (impl_g, ty_g, where_c) = generics.split_for_impl();

    let mut save = Vec::new();
    let mut restore = Vec::new();
    let mut hooks = Vec::new();
    for f in &fields {
        let (access, name) = (&f.access, &f.name);
        let one = match f.mode {
            Mode::Default => {
                // Spanned at the field's type so "does not implement Checkpoint" points there.
                let sp = f.ty.span();
                restore.push(quote_spanned!(sp=> __inp.field(#name, &mut self.#access)?;));
                hooks.push(quote!(#rt::Checkpoint::after_restore(&mut self.#access)?;));
                quote_spanned!(sp=> __out.field(#name, &self.#access))
            }
            Mode::Serde => {
                restore.push(quote!(__inp.serde_field(#name, &mut self.#access)?;));
                quote!(__out.serde_field(#name, &self.#access))
            }
            Mode::Skip => continue,
        };
        save.push(if f.replicated {
            quote!(__out.replicated(|__out| #one)?;)
        } else {
            quote!(#one?;)
        });
    }
    if let Some(hook) = &attrs.after_restore {
        hooks.push(quote!(#hook(self)?;));
    }
    let save_body = if attrs.replicated {
        quote! {
            __out.replicated(|__out| {
                #(#save)*
                let _ = __out;
                ::core::result::Result::Ok(())
            })
        }
    } else {
        quote! {
            #(#save)*
            let _ = __out;
            ::core::result::Result::Ok(())
        }
    };
    let lt = format_ident!("__lazarus_a");
    let lt = syn::Lifetime {
        apostrophe: Span::call_site(),
        ident: lt,
    };
    Ok(quote! {
        impl #impl_g #rt::Checkpoint for #ident #ty_g #where_c {
            fn save<#lt>(&#lt self, __out: &mut #rt::StateWriter<#lt>) -> ::core::result::Result<(), #rt::StateError> {
                #save_body
            }
            fn restore(&mut self, __inp: &mut #rt::StateReader) -> ::core::result::Result<(), #rt::StateError> {
                #(#restore)*
                let _ = __inp;
                ::core::result::Result::Ok(())
            }
            fn after_restore(&mut self) -> ::core::result::Result<(), #rt::StateError> {
                #(#hooks)*
                ::core::result::Result::Ok(())
            }
        }
    })
}
