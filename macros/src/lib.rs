//! `#[memoize]`: memoize a function in a shared-memory cache, across processes, with
//! single-flight computation. Use it through `shmemcache::memoize` (the `macros` feature,
//! on by default); the documentation and examples live there.

use proc_macro::TokenStream;
use proc_macro2::{Span, TokenStream as TokenStream2};
use quote::{format_ident, quote, quote_spanned};
use syn::spanned::Spanned;
use syn::{
    parse_macro_input, Error, Expr, FnArg, GenericArgument, Ident, ItemFn, LitBool, LitInt, LitStr,
    Pat, Path, PathArguments, ReturnType, Type,
};

/// How the key of a call is built.
enum KeySpec {
    /// The arguments themselves, in declaration order.
    Args,
    /// `key = path::to::fn`: called with a reference to each argument.
    Func(Path),
    /// `key = "user:{id}"`: a format string over the argument names.
    Template(LitStr),
}

/// Options given in `#[memoize(...)]`.
struct Args {
    cache: Option<Expr>,
    name: Option<LitStr>,
    namespace: Option<LitStr>,
    ttl: Option<TokenStream2>,
    stale_after: Option<TokenStream2>,
    serve_stale: bool,
    wait_timeout: Option<TokenStream2>,
    on_error_propagate: bool,
    max_size: Option<LitInt>,
    cache_none: bool,
    ignore_self: bool,
    key: KeySpec,
}

/// A duration literal (`"250ms"`, `"1.5s"`, `"5m"`, `"1m30s"`) as a `Duration` expression,
/// parsed at compile time by the same parser the CLI uses.
fn duration(lit: &LitStr) -> syn::Result<TokenStream2> {
    let d =
        shmemcache_units::parse_duration(&lit.value()).map_err(|e| Error::new(lit.span(), e))?;
    let (secs, nanos) = (d.as_secs(), d.subsec_nanos());
    Ok(quote!(::std::time::Duration::new(#secs, #nanos)))
}

fn parse_args(attr: TokenStream2) -> syn::Result<Args> {
    let mut a = Args {
        cache: None,
        name: None,
        namespace: None,
        ttl: None,
        stale_after: None,
        serve_stale: false,
        wait_timeout: None,
        on_error_propagate: false,
        max_size: None,
        cache_none: false,
        ignore_self: false,
        key: KeySpec::Args,
    };
    let flag = |m: &syn::meta::ParseNestedMeta| -> syn::Result<bool> {
        match m.value() {
            Ok(v) => Ok(v.parse::<LitBool>()?.value),
            Err(_) => Ok(true),
        }
    };
    let parser = syn::meta::parser(|m| {
        if m.path.is_ident("cache") {
            a.cache = Some(m.value()?.parse()?);
        } else if m.path.is_ident("name") {
            a.name = Some(m.value()?.parse()?);
        } else if m.path.is_ident("namespace") {
            a.namespace = Some(m.value()?.parse()?);
        } else if m.path.is_ident("ttl") {
            let lit: LitStr = m.value()?.parse()?;
            let ttl =
                shmemcache_units::parse_ttl(&lit.value()).map_err(|e| Error::new(lit.span(), e))?;
            a.ttl = Some(match ttl {
                None => quote!(::shmemcache::Ttl::Never),
                Some(_) => {
                    let d = duration(&lit)?;
                    quote!(::shmemcache::Ttl::For(#d))
                }
            });
        } else if m.path.is_ident("stale_after") {
            a.stale_after = Some(duration(&m.value()?.parse()?)?);
        } else if m.path.is_ident("serve_stale") {
            a.serve_stale = flag(&m)?;
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
            a.cache_none = flag(&m)?;
        } else if m.path.is_ident("ignore_self") {
            a.ignore_self = flag(&m)?;
        } else if m.path.is_ident("key") {
            let v = m.value()?;
            a.key = if v.peek(LitStr) {
                KeySpec::Template(v.parse()?)
            } else {
                KeySpec::Func(v.parse()?)
            };
        } else {
            return Err(m.error(
                "unknown option; expected cache, name, namespace, ttl, stale_after, \
                 serve_stale, wait_timeout, on_error, max_size, cache_none, key or ignore_self",
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

/// The generic arguments of `ty` if its last path segment is `name`.
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

/// Memoizes a function across processes in a `shmemcache::Cache`. Documented on
/// `shmemcache::memoize`.
#[proc_macro_attribute]
pub fn memoize(attr: TokenStream, item: TokenStream) -> TokenStream {
    let original = TokenStream2::from(item.clone());
    // On a misuse, the function is kept as written, so the one error is the macro's.
    let fail = |e: Error| {
        let mut t = e.to_compile_error();
        t.extend(original.clone());
        TokenStream::from(t)
    };
    let args = match parse_args(attr.into()) {
        Ok(a) => a,
        Err(e) => return fail(e),
    };
    let func = parse_macro_input!(item as ItemFn);
    match expand(args, func) {
        Ok(t) => t.into(),
        Err(e) => fail(e),
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
    let mut receiver = None;
    let mut names: Vec<Ident> = Vec::new();
    let mut types = Vec::new();
    for input in &sig.inputs {
        match input {
            FnArg::Receiver(r) => {
                if r.reference.is_none() {
                    return Err(Error::new(
                        r.span(),
                        "#[memoize] methods take `&self` or `&mut self`, not `self` by value",
                    ));
                }
                receiver = Some(r);
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
    let method = receiver.is_some() || a.ignore_self;
    if receiver.is_some() && !a.ignore_self && matches!(a.key, KeySpec::Args) {
        return Err(Error::new(
            sig.span(),
            "#[memoize] on a method needs `ignore_self` (the key is the other arguments) or \
             `key = ...` (a function of the arguments, `self` included, or a format string)",
        ));
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

    let cache = a.cache.as_ref().expect("checked");
    let ident = &sig.ident;
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
    // The receiver as the key function and the body see it.
    let self_arg = match &receiver {
        Some(_) => quote!(self,),
        None => quote!(),
    };
    let key = match &a.key {
        KeySpec::Args => quote!(&(#(&#names,)*)),
        KeySpec::Func(f) => quote!(&#f(#self_arg #(&#names),*)),
        KeySpec::Template(t) => quote!(&::std::format!(#t)),
    };
    // The bounds, checked where the user wrote the type so the error points there.
    let bounds = quote_spanned! {value_ty.span()=>
        ::shmemcache::__macro_support::assert_memo_value::<#value_ty>();
    };
    // With `namespace = "..."`, the memo lives in that namespace of the cache: a handle on
    // it is made once, on first use.
    let target = match &a.namespace {
        None => quote!(&*#cache),
        Some(ns) => quote!({
            static NS: ::std::sync::OnceLock<::shmemcache::Cache> = ::std::sync::OnceLock::new();
            NS.get_or_init(|| {
                ::shmemcache::Cache::namespace(&*#cache, #ns).unwrap_or_else(|e| {
                    ::std::panic!("#[memoize]: cannot open namespace {:?}: {}", #ns, e)
                })
            })
        }),
    };
    let memo_init = quote! {
        static MEMO: ::std::sync::OnceLock<::shmemcache::Memo<'static, #value_ty>> =
            ::std::sync::OnceLock::new();
        MEMO.get_or_init(|| {
            #bounds
            ::shmemcache::Memo::new(#target, #namespace)
                .options(#opts)
                #skip_none
        })
    };
    let cloned = quote!(#(::std::clone::Clone::clone(&#names)),*);
    let arg_list = quote!(#(#names: #types),*);
    let arg_list_then = quote!(#(#names: #types,)*);
    let attrs = &func.attrs;
    let vis = &func.vis;
    let block = &func.block;
    let inputs = &sig.inputs;

    // `memo` names the handle, `inner` the original body (called with `recv` first), and
    // `opts` is the options expression of the call.
    let body = |memo: TokenStream2, inner: TokenStream2, recv: TokenStream2, opts: TokenStream2| {
        if fallible.is_some() {
            quote! {
                match #memo.try_call_with(#key, #opts, || #inner(#recv #cloned)) {
                    ::std::result::Result::Ok(v) => ::std::result::Result::Ok(v),
                    ::std::result::Result::Err(::shmemcache::ComputeError::Compute(e)) => {
                        ::std::result::Result::Err(e)
                    }
                    // The cache itself failed (a lock timeout, say): run uncached.
                    ::std::result::Result::Err(_) => #inner(#recv #(#names),*),
                }
            }
        } else {
            quote! {
                match #memo.try_call_with(
                    #key,
                    #opts,
                    || ::std::result::Result::Ok::<_, ::std::convert::Infallible>(
                        #inner(#recv #cloned)
                    ),
                ) {
                    ::std::result::Result::Ok(v) => v,
                    ::std::result::Result::Err(_) => #inner(#recv #(#names),*),
                }
            }
        }
    };

    if method {
        let inner = format_ident!("__memoize_inner_{}", ident);
        let memo_fn = format_ident!("{}_memo", ident);
        let with_fn = format_ident!("{}_with", ident);
        let recv_param = sig.inputs.iter().find_map(|i| match i {
            FnArg::Receiver(r) => Some(quote!(#r,)),
            _ => None,
        });
        // `Self::inner(self, args)` works for `&self` and `&mut self` alike.
        let handle = quote!(Self::#memo_fn());
        let plain = body(
            handle.clone(),
            quote!(Self::#inner),
            self_arg.clone(),
            quote!(#handle.compute_options()),
        );
        let with = body(handle, quote!(Self::#inner), self_arg, quote!(opts));
        let doc_memo = format!("The memo handle of [`Self::{ident}`] (one per process).");
        let doc_with = format!("[`Self::{ident}`] with options for this call only.");
        return Ok(quote! {
            #(#attrs)*
            #vis fn #ident(#inputs) -> #ret {
                #plain
            }

            #[allow(clippy::too_many_arguments)]
            fn #inner(#inputs) -> #ret #block

            #[doc = #doc_memo]
            #vis fn #memo_fn() -> &'static ::shmemcache::Memo<'static, #value_ty> {
                #memo_init
            }

            #[doc = #doc_with]
            #[allow(clippy::too_many_arguments)]
            #vis fn #with_fn(
                #recv_param
                opts: &::shmemcache::ComputeOptions,
                #arg_list
            ) -> #ret {
                #with
            }
        });
    }

    let inner = quote!(#ident::__memoize_inner);
    // With serve_stale, a stale value's refresh runs on the handle's thread, so the call
    // owns copies of the arguments: `&T` becomes `T::Owned`, passed back by reference.
    let ownable = !types
        .iter()
        .any(|t| matches!(t, Type::Reference(r) if r.mutability.is_some()));
    let plain = if a.serve_stale && ownable {
        let owned: Vec<Ident> = (0..names.len())
            .map(|i| format_ident!("__memoize_owned_{}", i))
            .collect();
        let take = names
            .iter()
            .zip(&types)
            .zip(&owned)
            .map(|((n, t), o)| match t {
                Type::Reference(_) => quote!(let #o = ::std::borrow::ToOwned::to_owned(#n);),
                _ => quote!(let #o = ::std::clone::Clone::clone(&#n);),
            });
        let pass = types.iter().zip(&owned).map(|(t, o)| match t {
            Type::Reference(_) => quote!(&#o),
            _ => quote!(#o),
        });
        let call = quote!(#inner(#(#pass),*));
        let compute = if fallible.is_some() {
            quote!(move || #call)
        } else {
            quote!(move || ::std::result::Result::Ok::<_, ::std::convert::Infallible>(#call))
        };
        let on_ok = if fallible.is_some() {
            quote!(::std::result::Result::Ok(v))
        } else {
            quote!(v)
        };
        let on_compute_err = if fallible.is_some() {
            quote!(::std::result::Result::Err(::shmemcache::ComputeError::Compute(e)) => ::std::result::Result::Err(e),)
        } else {
            quote!()
        };
        quote! {
            #(#take)*
            match #ident::memo().try_call_owned(#key, #compute) {
                ::std::result::Result::Ok(v) => #on_ok,
                #on_compute_err
                // The cache itself failed (a lock timeout, say): run uncached.
                ::std::result::Result::Err(_) => #inner(#(#names),*),
            }
        }
    } else {
        body(
            quote!(#ident::memo()),
            inner.clone(),
            quote!(),
            quote!(#ident::memo().compute_options()),
        )
    };
    let with = body(quote!(#ident::memo()), inner, quote!(), quote!(&self.opts));
    let doc = format!(
        "Companion of the memoized function [`{ident}()`]: its memo handle, cache controls \
         and per-call options."
    );
    Ok(quote! {
        #(#attrs)*
        #vis fn #ident(#inputs) -> #ret {
            #plain
        }

        #[doc = #doc]
        #[allow(non_camel_case_types, dead_code)]
        #vis struct #ident {
            opts: ::shmemcache::ComputeOptions,
        }

        #[allow(dead_code, clippy::too_many_arguments)]
        impl #ident {
            fn __memoize_inner(#inputs) -> #ret #block

            /// The memo handle (one per process).
            pub fn memo() -> &'static ::shmemcache::Memo<'static, #value_ty> {
                #memo_init
            }

            /// The options given in the attribute, to change for one call with
            /// [`with`](Self::with).
            pub fn options() -> ::shmemcache::ComputeOptions {
                ::std::clone::Clone::clone(Self::memo().compute_options())
            }

            /// The function with these options for the calls made through the result
            /// (`skip_cache`, `overwrite`, `max_age`, ...): start from
            /// [`options`](Self::options) to keep the attribute's.
            pub fn with(opts: ::shmemcache::ComputeOptions) -> Self {
                Self { opts }
            }

            /// Calls the function with this value's options.
            pub fn call(&self, #arg_list) -> #ret {
                #with
            }

            /// Forgets the stored result for these arguments; true if there was one.
            pub fn reset(#arg_list) -> ::shmemcache::Result<bool> {
                Self::memo().reset(#key)
            }

            /// Stores `value` as the result for these arguments.
            pub fn precache(#arg_list_then value: &#value_ty) -> ::shmemcache::Result<()> {
                Self::memo().precache(#key, value)
            }

            /// Forgets every stored result of the function.
            pub fn clear() -> ::shmemcache::Result<usize> {
                Self::memo().clear()
            }

            /// Drops the function's in-flight markers (waiters then compute themselves).
            pub fn clear_in_flight() -> ::shmemcache::Result<u32> {
                Self::memo().clear_in_flight()
            }

            /// Machine-wide counters of the function (every process adds to them).
            pub fn stats() -> ::shmemcache::MemoStats {
                Self::memo().stats()
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dur(s: &str) -> syn::Result<String> {
        duration(&LitStr::new(s, Span::call_site())).map(|t| t.to_string())
    }

    #[test]
    fn durations_use_the_shared_parser() {
        assert!(dur("250ms").unwrap().contains("0u64 , 250000000u32"));
        assert!(dur("1.5s").unwrap().contains("1u64 , 500000000u32"));
        assert!(dur("5m").unwrap().contains("300u64"));
        assert!(dur("1d").unwrap().contains("86400u64"));
        for bad in ["m", "5 weeks", "0s", "99999999999999999999d", "-1s"] {
            assert!(dur(bad).is_err(), "{bad} accepted");
        }
    }

    #[test]
    fn options_are_checked() {
        let a = parse_args(quote!(
            cache = C,
            ttl = "never",
            serve_stale,
            on_error = "propagate",
            ignore_self,
            key = my::key_fn
        ))
        .unwrap();
        assert!(a.serve_stale && a.on_error_propagate && a.ttl.is_some() && a.ignore_self);
        assert!(matches!(a.key, KeySpec::Func(_)));
        let a = parse_args(quote!(cache = C, key = "user:{id}", ttl = "1.5h")).unwrap();
        assert!(matches!(a.key, KeySpec::Template(_)));
        assert!(parse_args(quote!(ttl = "5m")).is_err(), "cache is required");
        assert!(parse_args(quote!(cache = C, colour = "red")).is_err());
        assert!(parse_args(quote!(cache = C, on_error = "ignore")).is_err());
        assert!(parse_args(quote!(cache = C, ttl = "5 parsecs")).is_err());
        assert!(parse_args(quote!(cache = C, ttl = "0s")).is_err());
    }
}
