/*
 * The broker's record of who belongs to the federation, kept in etcd:
 * join tokens (only a hash of the secret is stored), sites with their
 * public keys, and revocation. The link server's check_key and join hooks
 * are backed by mer_membership_check_key and mer_membership_join.
 *
 * etcd layout under a prefix (default "/meridian"):
 *   <prefix>/tokens/<id>          token record (JSON, hash only)
 *   <prefix>/sites/<name>         site record (JSON)
 *   <prefix>/site-keys/<sha256>   site name, by hex SHA-256 of its key;
 *                                 kept after revocation, so an old key
 *                                 stays revoked even after a re-join
 * All calls are thread-safe and block on etcd (bounded by its timeouts).
 */
#ifndef MERIDIAN_BROKER_MEMBERSHIP_H
#define MERIDIAN_BROKER_MEMBERSHIP_H

#include <stdint.h>

#include "common/etcd.h"
#include "common/keys.h"
#include "common/link.h"
#include "common/token.h"

struct mer_membership;

/* etcd must outlive m. prefix NULL = "/meridian" (copied). */
int mer_membership_open(struct mer_etcd *etcd, const char *prefix,
			struct mer_membership **out);
void mer_membership_close(struct mer_membership *m);

struct mer_token_info {
	char id[MER_TOKEN_ID_LEN + 1];
	char site[MER_LINK_NAME_MAX];
	char region[MER_LINK_NAME_MAX];
	int64_t created_at; /* unix seconds */
	int64_t expires_at;
	int used;
	char used_by[MER_KEY_FP_SIZE]; /* fingerprint of the joining key */
};

/*
 * Creates a single-use token for site in region, valid ttl_s seconds
 * (1..30 days). token gets "<id>.<secret>": show it once, it is not stored.
 * info (may be NULL) gets the stored record. MER_EINVAL for a bad site
 * name (1..63 of [a-z0-9-], starting with a letter or digit), region or ttl.
 */
int mer_membership_token_create(struct mer_membership *m, const char *site,
				const char *region, int64_t ttl_s,
				char token[MER_TOKEN_SIZE],
				struct mer_token_info *info);

/* Reads a token's record by id (no secret needed). MER_ENOTFOUND. */
int mer_membership_token_get(struct mer_membership *m, const char *id,
			     struct mer_token_info *info);

/*
 * Claims a token for the key pk (the link's join hook). One etcd txn marks
 * the token used and records the site, guarded by the token's and the
 * site's mod_revision, so of two racing joins exactly one wins. Errors:
 * MER_EPARSE malformed token, MER_ENOTFOUND unknown id or wrong secret,
 * MER_EEXPIRED, MER_EUSED (used before, or lost the race), MER_ESTATE (pk
 * joined before: every join needs a new key; the token stays unused),
 * MER_EEXIST (the site exists and is not revoked), MER_EUNREACHABLE etc.
 * from etcd.
 * On success site and region are filled.
 */
int mer_membership_join(struct mer_membership *m, const char *token,
			const uint8_t pk[MER_KEY_BYTES],
			char site[MER_LINK_NAME_MAX],
			char region[MER_LINK_NAME_MAX]);

/* The link's check_key hook: 0 and the site's name for the current key of
 * a non-revoked site; MER_EREVOKED for a revoked site or a replaced key;
 * MER_ENOTFOUND for a key that never joined. */
int mer_membership_check_key(struct mer_membership *m,
			     const uint8_t pk[MER_KEY_BYTES],
			     char site[MER_LINK_NAME_MAX]);

struct mer_site_record {
	char name[MER_LINK_NAME_MAX];
	char region[MER_LINK_NAME_MAX];
	char public_key[MER_KEY_B64_SIZE];
	char fingerprint[MER_KEY_FP_SIZE];
	int64_t joined_at;
	int revoked;
	int64_t revoked_at;
};

int mer_membership_site_get(struct mer_membership *m, const char *name,
			    struct mer_site_record *rec);

/* Marks a site revoked (its key is refused from now on; joining again
 * needs a new token) and deletes, in the same txn, the dataset replicas
 * its stages left ("<prefix>/replicas/<site>/"; a repeat deletes them
 * again). The caller also calls mer_link_server_revoke to drop live
 * sessions. MER_ENOTFOUND for an unknown site. */
int mer_membership_revoke(struct mer_membership *m, const char *site);

#endif
