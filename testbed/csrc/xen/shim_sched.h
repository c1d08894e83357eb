/* shim_sched.h: struct vcpu and struct domain, as much of them as domain_page.c reads.
 *
 * After xen_tree.h, which defines the tree's struct mapcache_vcpu and mapcache_domain and how
 * the tree's struct pv_vcpu / pv_domain hold them (XEN_PV_VCPU_MAPCACHE, XEN_PV_DOMAIN_MAPCACHE:
 * the member lines parsed from its domain.h, so a patch that turns the embedded struct into a
 * pointer, as the seed does, is honoured). The rest of Xen's structs is not there.
 */
#ifndef TESTBED_XEN_SHIM_SCHED_H
#define TESTBED_XEN_SHIM_SCHED_H

struct pv_vcpu { XEN_PV_VCPU_MAPCACHE };
struct arch_vcpu {
  struct pv_vcpu pv;
  pagetable_t guest_table;
};
struct vcpu {
  int vcpu_id;
  unsigned int processor;
  struct domain *domain;
  struct arch_vcpu arch;
};
struct pv_domain { XEN_PV_DOMAIN_MAPCACHE };
struct arch_domain { struct pv_domain pv; };
struct domain {
  unsigned int max_vcpus;
  struct arch_domain arch;
};

#endif
