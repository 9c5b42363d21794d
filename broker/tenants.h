/*
 * API bearer tokens: the tenants file maps hashes of tokens to a tenant and
 * a role (admin or tenant). Only hashes are held (BLAKE2b-256, keyed, hex);
 * a presented token is hashed and compared in constant time against every
 * entry. Not join tokens (common/token.h) and not authorization rules,
 * which the API applies (api.c).
 */
#ifndef MERIDIAN_BROKER_TENANTS_H
#define MERIDIAN_BROKER_TENANTS_H

#include <stddef.h>

#define MER_TENANT_NAME_MAX 64
#define MER_API_HASH_BYTES 32
#define MER_API_HASH_HEX (2 * MER_API_HASH_BYTES + 1)

enum mer_role {
	MER_ROLE_TENANT = 0,
	MER_ROLE_ADMIN = 1,
};

struct mer_tenants;

/* Who a request is. */
struct mer_principal {
	char tenant[MER_TENANT_NAME_MAX];
	int role; /* enum mer_role */
};

/*
 * Loads a tenants file:
 *   {"tenants": [{"name": "acme", "role": "tenant",
 *                 "token_hashes": ["<64 hex>", ...]}, ...]}
 * Tenant names are 1..63 of [a-z0-9-_] starting with a letter or digit;
 * a hash may appear once in the whole file. On error err holds
 * "file:line:col: path: what is wrong". MER_EIO, MER_EPARSE, MER_EINVAL.
 */
int mer_tenants_load(const char *path, struct mer_tenants **out, char *err,
		     size_t errlen);
/* The same from text (tests). */
int mer_tenants_parse(const char *name, const char *text, size_t len,
		      struct mer_tenants **out, char *err, size_t errlen);
void mer_tenants_free(struct mer_tenants *t);
size_t mer_tenants_count(const struct mer_tenants *t);

/*
 * Finds the principal for a bearer token. Every entry is compared, whether
 * or not an earlier one matched, so time does not say which one did.
 * MER_EAUTH when no entry matches.
 */
int mer_tenants_auth(const struct mer_tenants *t, const char *token,
		     struct mer_principal *who);

/* The stored form of a token: 64 lowercase hex characters. */
void mer_api_token_hash_hex(const char *token, char out[MER_API_HASH_HEX]);

/* True when s is a valid tenant name. */
int mer_tenant_name_valid(const char *s);

#endif
