//! `virtual_net` (feature gate `VirtualNet`): each work connection of the proxy carries a
//! visitor's IP packets to and from frpc's TUN device (frp's `VirtualNetPlugin`; see
//! [`crate::client::vnet`]).

use std::sync::Arc;

use futures_util::FutureExt;
use futures_util::future::BoxFuture;

use super::{ConnInfo, Plugin, Relay, UserConn};
use crate::client::vnet::{self, ConnRole, Controller};

pub(crate) struct VirtualNet {
    vnet: Option<Arc<Controller>>,
}

impl VirtualNet {
    pub(crate) fn new(vnet: Option<Arc<Controller>>) -> Self {
        VirtualNet { vnet }
    }
}

impl Plugin for VirtualNet {
    fn name(&self) -> &'static str {
        "virtual_net"
    }

    fn handle(&self, user: UserConn, info: ConnInfo, _relay: Relay) -> BoxFuture<'static, ()> {
        let vnet = self.vnet.clone();
        async move {
            match vnet {
                Some(v) => v.serve_conn(user, ConnRole::Server).await,
                None => vnet::no_controller(&info.proxy),
            }
        }
        .boxed()
    }
}
