/*
 * The tenants file and bearer-token checks. Holds only keyed hashes of API
 * tokens; the tokens themselves never reach memory that outlives a request.
 * Not authorization (api.c decides what a role may do).
 */
#include "broker/tenants.h"

#include <ctype.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>
#include <sodium.h>

#include "common/err.h"
#include "common/json.h"

/* Domain separation from join-token hashes (common/token.c). */
static const unsigned char hash_key[] = "meridian-api-token-v1";

struct entry {
	unsigned char hash[MER_API_HASH_BYTES];
	size_t tenant; /* index in names */
};

struct mer_tenants {
	struct mer_principal *who; /* one per tenant */
	size_t nwho;
	struct entry *e;
	size_t ne;
};

static void hash_token(const char *token, unsigned char out[MER_API_HASH_BYTES])
{
	crypto_generichash(out, MER_API_HASH_BYTES,
			   (const unsigned char *)token, strlen(token),
			   hash_key, sizeof(hash_key) - 1);
}

void mer_api_token_hash_hex(const char *token, char out[MER_API_HASH_HEX])
{
	unsigned char h[MER_API_HASH_BYTES];

	hash_token(token, h);
	sodium_bin2hex(out, MER_API_HASH_HEX, h, sizeof(h));
	sodium_memzero(h, sizeof(h));
}

int mer_tenant_name_valid(const char *s)
{
	size_t n = s ? strlen(s) : 0;

	if (n < 1 || n > 63 || !isalnum((unsigned char)s[0]))
		return 0;
	for (size_t i = 0; i < n; i++) {
		unsigned char c = (unsigned char)s[i];
		if (!(islower(c) || isdigit(c) || c == '-' || c == '_'))
			return 0;
	}
	return 1;
}

static int parse_hash(const char *hex, unsigned char out[MER_API_HASH_BYTES])
{
	size_t got = 0;

	if (strlen(hex) != 2 * MER_API_HASH_BYTES)
		return MER_EINVAL;
	for (size_t i = 0; hex[i]; i++)
		if (!isxdigit((unsigned char)hex[i]))
			return MER_EINVAL;
	if (sodium_hex2bin(out, MER_API_HASH_BYTES, hex, strlen(hex), NULL,
			   &got, NULL) != 0 ||
	    got != MER_API_HASH_BYTES)
		return MER_EINVAL;
	return 0;
}

void mer_tenants_free(struct mer_tenants *t)
{
	if (!t)
		return;
	if (t->e)
		sodium_memzero(t->e, t->ne * sizeof(*t->e));
	free(t->e);
	free(t->who);
	free(t);
}

size_t mer_tenants_count(const struct mer_tenants *t)
{
	return t ? t->nwho : 0;
}

static int only_keys(const struct mer_json_doc *doc, const json_t *obj,
		     const char *path, const char *const *keys, char *err,
		     size_t errlen)
{
	const char *k;
	json_t *v;

	json_object_foreach ((json_t *)obj, k, v) {
		int ok = 0;
		for (size_t i = 0; keys[i]; i++)
			ok |= strcmp(k, keys[i]) == 0;
		if (!ok) {
			char p[256];
			snprintf(p, sizeof(p), "%s", path);
			mer_json_path_append(p, sizeof(p), k);
			mer_json_doc_key_errf(doc, p, err, errlen,
					      "unknown key '%s'", k);
			return MER_EINVAL;
		}
	}
	return 0;
}

static int from_doc(const struct mer_json_doc *doc, struct mer_tenants **out,
		    char *err, size_t errlen)
{
	static const char *const top_keys[] = {"tenants", NULL};
	static const char *const t_keys[] = {"name", "role", "token_hashes",
					     NULL};
	const json_t *list = json_object_get(doc->root, "tenants");
	struct mer_tenants *t = NULL;
	int rv = MER_EINVAL;
	char p[128];

	if (!json_is_object(doc->root)) {
		mer_json_doc_errf(doc, "", err, errlen, "must be an object");
		return MER_EINVAL;
	}
	if ((rv = only_keys(doc, doc->root, "", top_keys, err, errlen)))
		return rv;
	if (!json_is_array(list)) {
		mer_json_doc_errf(doc, "tenants", err, errlen,
				  "must be an array of tenants");
		return MER_EINVAL;
	}
	t = calloc(1, sizeof(*t));
	if (!t)
		return MER_ENOMEM;
	size_t nt = json_array_size(list), nh = 0;
	for (size_t i = 0; i < nt; i++)
		nh += json_array_size(
		    json_object_get(json_array_get(list, i), "token_hashes"));
	t->who = calloc(nt + 1, sizeof(*t->who));
	t->e = calloc(nh + 1, sizeof(*t->e));
	if (!t->who || !t->e) {
		rv = MER_ENOMEM;
		goto fail;
	}
	rv = MER_EINVAL;
	for (size_t i = 0; i < nt; i++) {
		const json_t *o = json_array_get(list, i);
		const json_t *name, *role, *hashes;

		snprintf(p, sizeof(p), "tenants[%zu]", i);
		if (!json_is_object(o)) {
			mer_json_doc_errf(doc, p, err, errlen,
					  "must be an object");
			goto fail;
		}
		if (only_keys(doc, o, p, t_keys, err, errlen))
			goto fail;
		name = json_object_get(o, "name");
		role = json_object_get(o, "role");
		hashes = json_object_get(o, "token_hashes");
		snprintf(p, sizeof(p), "tenants[%zu].name", i);
		if (!json_is_string(name) ||
		    !mer_tenant_name_valid(json_string_value(name))) {
			mer_json_doc_errf(doc, p, err, errlen,
					  "must be 1..63 of a-z 0-9 - _");
			goto fail;
		}
		for (size_t j = 0; j < t->nwho; j++)
			if (strcmp(t->who[j].tenant, json_string_value(name)) ==
			    0) {
				mer_json_doc_errf(doc, p, err, errlen,
						  "duplicate tenant");
				goto fail;
			}
		snprintf(p, sizeof(p), "tenants[%zu].role", i);
		const char *r = json_string_value(role);
		if (!r || (strcmp(r, "admin") && strcmp(r, "tenant"))) {
			mer_json_doc_errf(doc, p, err, errlen,
					  "must be \"admin\" or \"tenant\"");
			goto fail;
		}
		struct mer_principal *w = &t->who[t->nwho];
		snprintf(w->tenant, sizeof(w->tenant), "%s",
			 json_string_value(name));
		w->role =
		    strcmp(r, "admin") == 0 ? MER_ROLE_ADMIN : MER_ROLE_TENANT;
		snprintf(p, sizeof(p), "tenants[%zu].token_hashes", i);
		if (!json_is_array(hashes) || json_array_size(hashes) == 0) {
			mer_json_doc_errf(doc, p, err, errlen,
					  "must be a non-empty array of "
					  "token hashes");
			goto fail;
		}
		for (size_t j = 0; j < json_array_size(hashes); j++) {
			const char *h =
			    json_string_value(json_array_get(hashes, j));
			struct entry *e = &t->e[t->ne];

			snprintf(p, sizeof(p), "tenants[%zu].token_hashes[%zu]",
				 i, j);
			if (!h || parse_hash(h, e->hash)) {
				mer_json_doc_errf(doc, p, err, errlen,
						  "must be 64 hex characters "
						  "(meridian-broker "
						  "hash-token)");
				goto fail;
			}
			for (size_t k = 0; k < t->ne; k++)
				if (sodium_memcmp(t->e[k].hash, e->hash,
						  MER_API_HASH_BYTES) == 0) {
					mer_json_doc_errf(doc, p, err, errlen,
							  "hash used twice");
					goto fail;
				}
			e->tenant = t->nwho;
			t->ne++;
		}
		t->nwho++;
	}
	*out = t;
	return 0;
fail:
	mer_tenants_free(t);
	return rv;
}

int mer_tenants_parse(const char *name, const char *text, size_t len,
		      struct mer_tenants **out, char *err, size_t errlen)
{
	struct mer_json_doc doc;
	int rv;

	*out = NULL;
	rv = mer_json_doc_parse(name, text, len, 1u << 20, 16, &doc, err,
				errlen);
	if (rv)
		return rv;
	rv = from_doc(&doc, out, err, errlen);
	mer_json_doc_free(&doc);
	return rv;
}

int mer_tenants_load(const char *path, struct mer_tenants **out, char *err,
		     size_t errlen)
{
	struct mer_json_doc doc;
	int rv;

	*out = NULL;
	rv = mer_json_doc_load(path, 1u << 20, 16, &doc, err, errlen);
	if (rv)
		return rv;
	rv = from_doc(&doc, out, err, errlen);
	mer_json_doc_free(&doc);
	return rv;
}

int mer_tenants_auth(const struct mer_tenants *t, const char *token,
		     struct mer_principal *who)
{
	unsigned char h[MER_API_HASH_BYTES];
	size_t found = 0, match = 0;

	if (!t || !token || !*token || strlen(token) > 512)
		return MER_EAUTH;
	hash_token(token, h);
	/* No early exit: every entry costs the same. */
	for (size_t i = 0; i < t->ne; i++) {
		size_t eq = (size_t)(sodium_memcmp(t->e[i].hash, h,
						   MER_API_HASH_BYTES) == 0);
		found |= eq;
		match |= (0 - eq) & (t->e[i].tenant + 1);
	}
	sodium_memzero(h, sizeof(h));
	if (!found)
		return MER_EAUTH;
	*who = t->who[match - 1];
	return 0;
}
