//! Pod networking (netns, veth, bridge, IPAM), the cross-node overlay, the
//! nftables service proxy and cluster DNS.
//!
//! Empty until networking lands (issue #7).
