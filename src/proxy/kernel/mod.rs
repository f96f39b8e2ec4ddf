//! The proxy's kernel side: IPVS over generic netlink, the kube-ipvs0
//! addresses over rtnetlink, the nftables table.

pub mod dummy;
pub mod ipvs;
pub mod nft;
