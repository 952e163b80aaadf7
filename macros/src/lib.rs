//! `#[memoize]`: memoize a free function in a shared-memory cache, across processes, with
//! single-flight computation. Use it through `shmemcache::memoize` (the `macros` feature).
//!
//! ```ignore
//! use shmemcache::{memoize, Cache};
//! use std::sync::LazyLock;
//!
//! static CACHE: LazyLock<Cache> = LazyLock::new(|| Cache::open("app").unwrap());
//!
//! #[memoize(cache = CACHE, ttl = "5m", stale_after = "1m")]
//! fn price(sku: &str) -> Result<u64, std::io::Error> {
//!     // ... expensive ...
//! #   Ok(1)
//! }
//!
//! price("a")?;            // computed once across every process, then shared
//! price::reset("a")?;     // the handle lives in a module named after the function
//! ```

use proc_macro::TokenStream;
use proc_macro2::{Span, TokenStream as TokenStream2};
use quote::{format_ident, quote};
use syn::spanned::Spanned;
use syn::{
    parse_macro_input, Error, Expr, FnArg, GenericArgument, ItemFn, LitBool, LitInt, LitStr, Pat,
    PathArguments, ReturnType, Type,
};

/// Options given in `#[memoize(...)]`.
struct Args {
    cache: Option<Expr>,
    name: Option<LitStr>,
    ttl: Option<TokenStream2>,
    stale_after: Option<TokenStream2>,
    serve_stale: bool,
    wait_timeout: Option<TokenStream2>,
    on_error_propagate: bool,
    max_size: Option<LitInt>,
    cache_none: bool,
}

/// `"250ms"`, `"30s"`, `"5m"`, `"2h"`, `"1d"` → a `Duration` expression; checked at compile
/// time.
fn duration(lit: &LitStr) -> syn::Result<TokenStream2> {
    let s = lit.value();
    let t = s.trim();
    let split = t
        .find(|c: char| !c.is_ascii_digit())
        .ok_or_else(|| Error::new(lit.span(), "duration needs a unit: ms, s, m, h or d"))?;
    let (num, unit) = t.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| Error::new(lit.span(), format!("bad duration {s:?}")))?;
    let ms = match unit.trim() {
        "ms" => Some(n),
        "s" => n.checked_mul(1000),
        "m" => n.checked_mul(60_000),
        "h" => n.checked_mul(3_600_000),
        "d" => n.checked_mul(86_400_000),
        _ => {
            return Err(Error::new(
                lit.span(),
                format!("unknown unit in {s:?}: use ms, s, m, h or d"),
            ))
        }
    }
    .ok_or_else(|| Error::new(lit.span(), "duration overflows"))?;
    if ms == 0 {
        return Err(Error::new(lit.span(), "duration must be positive"));
    }
    Ok(quote!(::std::time::Duration::from_millis(#ms)))
}

fn parse_args(attr: TokenStream2) -> syn::Result<Args> {
    let mut a = Args {
        cache: None,
        name: None,
        ttl: None,
        stale_after: None,
        serve_stale: false,
        wait_timeout: None,
        on_error_propagate: false,
        max_size: None,
        cache_none: false,
    };
    let parser = syn::meta::parser(|m| {
        if m.path.is_ident("cache") {
            a.cache = Some(m.value()?.parse()?);
        } else if m.path.is_ident("name") {
            a.name = Some(m.value()?.parse()?);
        } else if m.path.is_ident("ttl") {
            let lit: LitStr = m.value()?.parse()?;
            a.ttl = Some(if lit.value() == "never" {
                quote!(::shmemcache::Ttl::Never)
            } else {
                let d = duration(&lit)?;
                quote!(::shmemcache::Ttl::For(#d))
            });
        } else if m.path.is_ident("stale_after") {
            a.stale_after = Some(duration(&m.value()?.parse()?)?);
        } else if m.path.is_ident("serve_stale") {
            a.serve_stale = match m.value() {
                Ok(v) => v.parse::<LitBool>()?.value,
                Err(_) => true,
            };
        } else if m.path.is_ident("wait_timeout") {
            a.wait_timeout = Some(duration(&m.value()?.parse()?)?);
        } else if m.path.is_ident("on_error") {
            let lit: LitStr = m.value()?.parse()?;
            a.on_error_propagate = match lit.value().as_str() {
                "retry" => false,
                "propagate" => true,
                _ => {
                    return Err(Error::new(
                        lit.span(),
                        "on_error is \"retry\" or \"propagate\"",
                    ))
                }
            };
        } else if m.path.is_ident("max_size") {
            a.max_size = Some(m.value()?.parse()?);
        } else if m.path.is_ident("cache_none") {
            a.cache_none = m.value()?.parse::<LitBool>()?.value;
        } else {
            return Err(m.error(
                "unknown option; expected cache, name, ttl, stale_after, serve_stale, \
                 wait_timeout, on_error, max_size or cache_none",
            ));
        }
        Ok(())
    });
    syn::parse::Parser::parse2(parser, attr)?;
    if a.cache.is_none() {
        return Err(Error::new(
            Span::call_site(),
            "#[memoize] needs `cache = STATIC` naming a static that derefs to a shmemcache::Cache",
        ));
    }
    Ok(a)
}

/// The single generic argument of `ty` if its last path segment is `name`.
fn generic_of<'t>(ty: &'t Type, name: &str) -> Option<Vec<&'t Type>> {
    let Type::Path(p) = ty else { return None };
    let seg = p.path.segments.last()?;
    if seg.ident != name {
        return None;
    }
    let PathArguments::AngleBracketed(args) = &seg.arguments else {
        return None;
    };
    Some(
        args.args
            .iter()
            .filter_map(|a| match a {
                GenericArgument::Type(t) => Some(t),
                _ => None,
            })
            .collect(),
    )
}

/// Memoizes a free function across processes in a `shmemcache::Cache`.
///
/// Options: `cache = STATIC` (required; a static that derefs to `Cache`, e.g. a
/// `LazyLock<Cache>`), `name = "..."` (key namespace; default: module path and function
/// name), `ttl = "5m"` or `"never"`, `stale_after = "1m"`, `serve_stale`,
/// `wait_timeout = "30s"`, `on_error = "retry" | "propagate"`, `max_size = 4096`,
/// `cache_none = true` (cache `None` results; off by default).
///
/// A function returning `Result<T, E>` caches only `Ok` values; errors are returned and
/// not stored. Arguments must implement `serde::Serialize` and `Clone` (references do);
/// they are encoded in declaration order to form the key. If the cache itself fails (a
/// lock timeout, say) the function runs uncached rather than failing.
///
/// The function gets a companion module of the same name holding `memo()`, `reset(args..)`,
/// `precache(args.., &value)`, `clear()`, `clear_in_flight()` and `stats()`.
#[proc_macro_attribute]
pub fn memoize(attr: TokenStream, item: TokenStream) -> TokenStream {
    let args = match parse_args(attr.into()) {
        Ok(a) => a,
        Err(e) => return e.to_compile_error().into(),
    };
    let func = parse_macro_input!(item as ItemFn);
    match expand(args, func) {
        Ok(t) => t.into(),
        Err(e) => e.to_compile_error().into(),
    }
}

fn expand(a: Args, func: ItemFn) -> syn::Result<TokenStream2> {
    let sig = &func.sig;
    if !sig.generics.params.is_empty() || sig.generics.where_clause.is_some() {
        return Err(Error::new(
            sig.generics.span(),
            "#[memoize] does not support generic functions",
        ));
    }
    if sig.asyncness.is_some() {
        return Err(Error::new(
            sig.span(),
            "#[memoize] does not support async functions",
        ));
    }
    let mut names = Vec::new();
    let mut types = Vec::new();
    for input in &sig.inputs {
        match input {
            FnArg::Receiver(r) => {
                return Err(Error::new(
                    r.span(),
                    "#[memoize] works on free functions, not methods",
                ))
            }
            FnArg::Typed(pt) => match &*pt.pat {
                Pat::Ident(id) if id.by_ref.is_none() && id.subpat.is_none() => {
                    names.push(id.ident.clone());
                    types.push((*pt.ty).clone());
                }
                other => {
                    return Err(Error::new(
                        other.span(),
                        "#[memoize] needs plain identifiers as argument patterns",
                    ))
                }
            },
        }
    }
    let ret: Type = match &sig.output {
        ReturnType::Default => syn::parse_quote!(()),
        ReturnType::Type(_, t) => (**t).clone(),
    };
    // Result<T, E>: cache T. Option<T> (possibly inside the Result): `None` only by option.
    let fallible = generic_of(&ret, "Result").filter(|g| g.len() == 2);
    let value_ty: Type = match &fallible {
        Some(g) => g[0].clone(),
        None => ret.clone(),
    };
    let is_option = generic_of(&value_ty, "Option").is_some_and(|g| g.len() == 1);

    let vis = &func.vis;
    let ident = &sig.ident;
    let inner = format_ident!("__memoize_inner_{}", ident);
    let attrs = &func.attrs;
    let block = &func.block;
    let inputs = &sig.inputs;
    let cache = a.cache.as_ref().expect("checked");
    let namespace = match &a.name {
        Some(n) => quote!(#n),
        None => {
            let s = ident.to_string();
            quote!(::std::concat!(::std::module_path!(), "::", #s))
        }
    };
    let mut opts = quote!(::shmemcache::ComputeOptions::new());
    if let Some(t) = &a.ttl {
        opts = quote!(#opts.ttl(#t));
    }
    if let Some(d) = &a.stale_after {
        opts = quote!(#opts.stale_after(#d));
    }
    if a.serve_stale {
        opts = quote!(#opts.serve_stale(true));
    }
    if let Some(d) = &a.wait_timeout {
        opts = quote!(#opts.wait_timeout(#d));
    }
    if a.on_error_propagate {
        opts = quote!(#opts.on_error(::shmemcache::OnError::Propagate));
    }
    if let Some(n) = &a.max_size {
        opts = quote!(#opts.max_size(#n));
    }
    let skip_none = if is_option && !a.cache_none {
        quote!(.dont_cache_if(|v: &#value_ty| v.is_none()))
    } else {
        quote!()
    };
    let key = quote!(&(#(&#names,)*));
    let cloned = quote!(#(::std::clone::Clone::clone(&#names)),*);
    let body = if fallible.is_some() {
        quote! {
            match #ident::memo().try_call(#key, || #inner(#cloned)) {
                ::std::result::Result::Ok(v) => ::std::result::Result::Ok(v),
                ::std::result::Result::Err(::shmemcache::ComputeError::Compute(e)) => {
                    ::std::result::Result::Err(e)
                }
                ::std::result::Result::Err(_) => #inner(#(#names),*),
            }
        }
    } else {
        quote! {
            match #ident::memo().call(#key, || #inner(#cloned)) {
                ::std::result::Result::Ok(v) => v,
                ::std::result::Result::Err(_) => #inner(#(#names),*),
            }
        }
    };
    let arg_list = quote!(#(#names: #types),*);
    let arg_list_then = quote!(#(#names: #types,)*);
    Ok(quote! {
        #(#attrs)*
        #vis fn #ident(#inputs) -> #ret {
            #body
        }

        #[allow(clippy::too_many_arguments)]
        fn #inner(#inputs) -> #ret #block

        /// The memo handle and cache controls of the function of the same name.
        #[allow(dead_code)]
        #vis mod #ident {
            #[allow(unused_imports)]
            use super::*;

            /// The memo handle (one per process).
            pub fn memo() -> &'static ::shmemcache::Memo<'static, #value_ty> {
                static MEMO: ::std::sync::OnceLock<::shmemcache::Memo<'static, #value_ty>> =
                    ::std::sync::OnceLock::new();
                MEMO.get_or_init(|| {
                    ::shmemcache::Memo::new(&*#cache, #namespace)
                        .options(#opts)
                        #skip_none
                })
            }

            /// Forgets the stored result for these arguments; true if there was one.
            pub fn reset(#arg_list) -> ::shmemcache::Result<bool> {
                memo().reset(#key)
            }

            /// Stores `value` as the result for these arguments.
            pub fn precache(#arg_list_then value: &#value_ty) -> ::shmemcache::Result<()> {
                memo().precache(#key, value)
            }

            /// Forgets every stored result of the function.
            pub fn clear() -> ::shmemcache::Result<usize> {
                memo().clear()
            }

            /// Drops the function's in-flight markers (waiters then compute themselves).
            pub fn clear_in_flight() -> ::shmemcache::Result<u32> {
                memo().clear_in_flight()
            }

            /// This process's hit/compute counters for the function.
            pub fn stats() -> ::shmemcache::MemoStats {
                memo().stats()
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(s: &str) -> syn::Result<String> {
        duration(&LitStr::new(s, Span::call_site())).map(|t| t.to_string())
    }

    #[test]
    fn durations_parse_with_units_and_reject_nonsense() {
        assert!(ms("250ms").unwrap().contains("250u64"));
        assert!(ms("5m").unwrap().contains("300000u64"));
        assert!(ms("2h").unwrap().contains("7200000u64"));
        assert!(ms("1d").unwrap().contains("86400000u64"));
        for bad in ["5", "m", "5 weeks", "0s", "99999999999999999999d", "-1s"] {
            assert!(ms(bad).is_err(), "{bad} accepted");
        }
    }

    #[test]
    fn options_are_checked() {
        let a = parse_args(quote!(
            cache = C,
            ttl = "never",
            serve_stale,
            on_error = "propagate"
        ))
        .unwrap();
        assert!(a.serve_stale && a.on_error_propagate && a.ttl.is_some());
        assert!(parse_args(quote!(ttl = "5m")).is_err(), "cache is required");
        assert!(parse_args(quote!(cache = C, colour = "red")).is_err());
        assert!(parse_args(quote!(cache = C, on_error = "ignore")).is_err());
        assert!(parse_args(quote!(cache = C, ttl = "5 parsecs")).is_err());
    }
}
