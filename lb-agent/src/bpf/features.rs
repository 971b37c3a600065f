//! What the running kernel supports, found by loading small programs (never
//! by reading a version string).

use aya::{
    Ebpf, EbpfLoader, VerifierLogLevel,
    programs::{CgroupSockAddr, ProgramType},
    sys::{BpfHelper, is_helper_supported},
};
use lb_common::meta::{
    FEATURE_ATOMIC_FETCH, FEATURE_CONNECT4, FEATURE_CONNECT6, FEATURE_GETPEERNAME4,
    FEATURE_GETPEERNAME6, FEATURE_NAMES, FEATURE_NETNS_COOKIE, FEATURE_RECVMSG4, FEATURE_RECVMSG6,
    FEATURE_SENDMSG4, FEATURE_SENDMSG6, FEATURE_SET_RETVAL, FEATURE_SOCK_DESTROY,
};

use super::{Error, object};

/// A hook: the program that implements it, its probe, and its feature bit.
pub(crate) struct Hook {
    pub program: &'static str,
    pub probe: &'static str,
    pub feature: u32,
    /// What a user loses without it.
    pub lost: &'static str,
}

pub(crate) const HOOKS: [Hook; 8] = [
    Hook {
        program: "connect4",
        probe: "p_connect4",
        feature: FEATURE_CONNECT4,
        lost: "IPv4 TCP and connected UDP",
    },
    Hook {
        program: "connect6",
        probe: "p_connect6",
        feature: FEATURE_CONNECT6,
        lost: "IPv6 and IPv4-mapped TCP and connected UDP",
    },
    Hook {
        program: "sendmsg4",
        probe: "p_sendmsg4",
        feature: FEATURE_SENDMSG4,
        lost: "unconnected IPv4 UDP",
    },
    Hook {
        program: "sendmsg6",
        probe: "p_sendmsg6",
        feature: FEATURE_SENDMSG6,
        lost: "unconnected IPv6 UDP",
    },
    Hook {
        program: "recvmsg4",
        probe: "p_recvmsg4",
        feature: FEATURE_RECVMSG4,
        lost: "ClusterIP as the source of unconnected IPv4 UDP replies",
    },
    Hook {
        program: "recvmsg6",
        probe: "p_recvmsg6",
        feature: FEATURE_RECVMSG6,
        lost: "ClusterIP as the source of unconnected IPv6 UDP replies",
    },
    Hook {
        program: "getpeername4",
        probe: "p_getpeername4",
        feature: FEATURE_GETPEERNAME4,
        lost: "ClusterIP from getpeername() on IPv4 sockets",
    },
    Hook {
        program: "getpeername6",
        probe: "p_getpeername6",
        feature: FEATURE_GETPEERNAME6,
        lost: "ClusterIP from getpeername() on IPv6 sockets",
    },
];

/// The probed features, a bit set of `FEATURE_*`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Features {
    pub supported: u32,
}

impl Features {
    /// Probes the running kernel.
    ///
    /// # Errors
    /// When even the probes cannot be loaded (no privilege, no BPF).
    pub fn probe() -> Result<Self, Error> {
        let mut ebpf = EbpfLoader::new()
            .verifier_log_level(VerifierLogLevel::DISABLE)
            .load(object::probe()?)
            .map_err(|source| Error::Load {
                what: "the feature probes",
                source: Box::new(source),
            })?;
        let mut supported = 0;
        for hook in &HOOKS {
            if loads(&mut ebpf, hook.probe) {
                supported |= hook.feature;
            }
        }
        if loads(&mut ebpf, "p_fetch") {
            supported |= FEATURE_ATOMIC_FETCH;
        }
        if helper(BpfHelper::BPF_FUNC_set_retval) {
            supported |= FEATURE_SET_RETVAL;
        }
        if helper(BpfHelper::BPF_FUNC_get_netns_cookie) {
            supported |= FEATURE_NETNS_COOKIE;
        }
        match crate::sockets::probe_destroy() {
            Ok(()) => supported |= FEATURE_SOCK_DESTROY,
            Err(e) => tracing::warn!(
                error = %e,
                "this kernel cannot close sockets on request (sock_diag SOCK_DESTROY needs CONFIG_INET_DIAG_DESTROY and udp_diag): a connected UDP socket stays on a backend that left its service until the application closes it"
            ),
        }
        Ok(Self { supported })
    }

    #[must_use]
    pub const fn has(self, feature: u32) -> bool {
        self.supported & feature == feature
    }

    /// `name: yes|no` for every feature, for the start-up log.
    #[must_use]
    pub fn describe(self) -> String {
        describe_bits(self.supported, !self.supported)
    }
}

/// Renders supported/unsupported bit sets as `a b !c` style text.
#[must_use]
pub(crate) fn describe_bits(active: u32, unsupported: u32) -> String {
    FEATURE_NAMES
        .iter()
        .filter(|(bit, _)| active & bit != 0 || unsupported & bit != 0)
        .map(|(bit, name)| {
            if active & bit != 0 {
                (*name).to_owned()
            } else {
                format!("{name}:unsupported")
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

fn loads(ebpf: &mut Ebpf, name: &str) -> bool {
    let Some(program) = ebpf.program_mut(name) else {
        return false;
    };
    let program: Result<&mut CgroupSockAddr, _> = program.try_into();
    program.is_ok_and(|p| p.load().is_ok())
}

fn helper(helper: BpfHelper) -> bool {
    is_helper_supported(ProgramType::CgroupSockAddr, helper).unwrap_or(false)
}
