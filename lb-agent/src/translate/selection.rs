//! Which objects this proxy serves: kube-proxy's label selector.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

use super::{LABEL_HEADLESS, LABEL_SERVICE_PROXY_NAME, Options};

pub(super) fn label<'a>(metadata: &'a ObjectMeta, key: &str) -> Option<&'a str> {
    metadata.labels.as_ref()?.get(key).map(String::as_str)
}

/// Whether this proxy serves objects with these labels. kube-proxy watches
/// Services and `EndpointSlices` with the selector
/// `!service.kubernetes.io/service-proxy-name,!service.kubernetes.io/headless`;
/// an agent with a proxy name serves exactly the Services labelled with it.
pub(super) fn wanted(metadata: &ObjectMeta, opts: &Options) -> bool {
    wanted_labels(
        label(metadata, LABEL_HEADLESS).is_some(),
        label(metadata, LABEL_SERVICE_PROXY_NAME),
        opts,
    )
}

/// [`wanted`], from whether the object is labelled headless and its proxy
/// name label.
pub(super) fn wanted_labels(headless: bool, proxy_name: Option<&str>, opts: &Options) -> bool {
    if headless {
        return false;
    }
    match (proxy_name, opts.service_proxy_name.as_deref()) {
        (None, None) => true,
        (Some(have), Some(want)) => have == want,
        (Some(_), None) | (None, Some(_)) => false,
    }
}
