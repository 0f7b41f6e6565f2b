/* filter_util.c: the pure pieces of the checks (query names, networks,
 * HELO syntax, list matching), apart so that unit tests reach them. */
#include "filter/filter_int.h"

#include <arpa/inet.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "lib/util.h"

static const unsigned char *filter_v4(const struct sockaddr *sa)
{
	static const unsigned char mapped[12] = { 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff };

	if (sa->sa_family == AF_INET)
		return (const unsigned char *)&((const struct sockaddr_in *)sa)->sin_addr;
	if (sa->sa_family == AF_INET6) {
		const unsigned char *a = ((const struct sockaddr_in6 *)sa)->sin6_addr.s6_addr;
		if (memcmp(a, mapped, 12) == 0)
			return a + 12;
	}
	return NULL;
}

int filter_dnsbl_name(const struct sockaddr *sa, const char *zone, char *out, size_t cap)
{
	const unsigned char *v4 = filter_v4(sa);
	size_t off = 0;

	if (v4 != NULL)
		return util_fmt(out, cap, "%u.%u.%u.%u.%s", v4[3], v4[2], v4[1], v4[0], zone);
	if (sa->sa_family != AF_INET6)
		return -1;
	{
		const unsigned char *a = ((const struct sockaddr_in6 *)sa)->sin6_addr.s6_addr;
		static const char hex[] = "0123456789abcdef";

		if (cap < 64 + strlen(zone) + 1)
			return -1;
		for (int i = 15; i >= 0; i--) {
			out[off++] = hex[a[i] & 0xf];
			out[off++] = '.';
			out[off++] = hex[a[i] >> 4];
			out[off++] = '.';
		}
		return util_fmt(out + off, cap - off, "%s", zone);
	}
}

int filter_grey_net(const struct sockaddr *sa, char *out, size_t cap)
{
	const unsigned char *v4 = filter_v4(sa);
	char buf[INET6_ADDRSTRLEN];
	struct in6_addr a6;

	if (v4 != NULL)
		return util_fmt(out, cap, "%u.%u.%u.0/24", v4[0], v4[1], v4[2]);
	if (sa->sa_family != AF_INET6)
		return util_fmt(out, cap, "local");
	memcpy(&a6, &((const struct sockaddr_in6 *)sa)->sin6_addr, sizeof(a6));
	memset(a6.s6_addr + 8, 0, 8);
	if (inet_ntop(AF_INET6, &a6, buf, sizeof(buf)) == NULL)
		return -1;
	return util_fmt(out, cap, "%s/64", buf);
}

static int filter_label_ok(const char *p, size_t n)
{
	if (n == 0 || n > 63 || p[0] == '-' || p[n - 1] == '-')
		return 0;
	for (size_t i = 0; i < n; i++) {
		unsigned char c = (unsigned char)p[i];
		if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
		    c == '-' || c == '_'))
			return 0;
	}
	return 1;
}

int filter_helo_syntax(const char *name)
{
	size_t len = strlen(name);
	int dots = 0;

	if (len == 0 || len > 255)
		return 0;
	if (name[0] == '[') {
		char lit[INET6_ADDRSTRLEN + 8];
		unsigned char tmp[16];

		if (name[len - 1] != ']' || len - 2 >= sizeof(lit))
			return 0;
		memcpy(lit, name + 1, len - 2);
		lit[len - 2] = '\0';
		if (strncasecmp(lit, "IPv6:", 5) == 0)
			return inet_pton(AF_INET6, lit + 5, tmp) == 1;
		return inet_pton(AF_INET, lit, tmp) == 1;
	}
	if (name[len - 1] == '.')
		len--;      /* a trailing dot (absolute name) is fine */
	for (size_t i = 0, start = 0; i <= len; i++) {
		if (i == len || name[i] == '.') {
			if (!filter_label_ok(name + start, i - start))
				return 0;
			dots += i < len;
			start = i + 1;
		}
	}
	return dots > 0;
}

int filter_addr_match(const char *value, const char *addr)
{
	const char *at = strrchr(addr, '@');

	if (value[0] == '@') {
		size_t vl = strlen(value + 1), dl;
		const char *dom;

		if (at == NULL || vl == 0)
			return 0;
		dom = at + 1;
		dl = strlen(dom);
		if (dl == vl)
			return strcasecmp(dom, value + 1) == 0;
		/* a subdomain: "x.example.com" under "@example.com" */
		return dl > vl && dom[dl - vl - 1] == '.' && strcasecmp(dom + dl - vl, value + 1) == 0;
	}
	return strcasecmp(value, addr) == 0;
}

int filter_ip_match(const char *value, const struct sockaddr *sa)
{
	char buf[INET6_ADDRSTRLEN + 8];
	const char *slash = strchr(value, '/');
	unsigned char net[16], ip[16];
	const unsigned char *v4 = filter_v4(sa);
	long long prefix;
	int fam, bytes;

	if (util_fmt(buf, sizeof(buf), "%.*s", (int)(slash ? (size_t)(slash - value) : strlen(value)),
	    value) < 0)
		return -1;
	if (inet_pton(AF_INET, buf, net) == 1)
		fam = AF_INET, bytes = 4;
	else if (inet_pton(AF_INET6, buf, net) == 1)
		fam = AF_INET6, bytes = 16;
	else
		return -1;
	if (slash == NULL)
		prefix = bytes * 8;
	else if (util_strtonum(slash + 1, 0, bytes * 8, &prefix) < 0)
		return -1;
	if (fam == AF_INET) {
		if (v4 == NULL)
			return 0;
		memcpy(ip, v4, 4);
	} else {
		if (sa->sa_family != AF_INET6)
			return 0;
		memcpy(ip, ((const struct sockaddr_in6 *)sa)->sin6_addr.s6_addr, 16);
	}
	for (int i = 0; i < bytes && prefix > 0; i++, prefix -= 8) {
		unsigned char mask = prefix >= 8 ? 0xff : (unsigned char)(0xff << (8 - prefix));
		if ((ip[i] & mask) != (net[i] & mask))
			return 0;
	}
	return 1;
}

int filter_sa_equal(const struct sockaddr *a, const struct sockaddr *b)
{
	const unsigned char *a4 = filter_v4(a), *b4 = filter_v4(b);

	if (a4 != NULL || b4 != NULL)
		return a4 != NULL && b4 != NULL && memcmp(a4, b4, 4) == 0;
	return a->sa_family == AF_INET6 && b->sa_family == AF_INET6 &&
	    memcmp(&((const struct sockaddr_in6 *)a)->sin6_addr,
	    &((const struct sockaddr_in6 *)b)->sin6_addr, 16) == 0;
}

int filter_list_check(const char *list, const char *kind, const char *value, const char *skip,
    char **error_r)
{
	struct sockaddr_in6 any = { .sin6_family = AF_INET6 };
	const char *at;

	if (strcmp(list, "allow") != 0 && strcmp(list, "block") != 0)
		return util_err(error_r, "a list is allow or block, not '%.16s'", list);
	if (value[0] == '\0' || strlen(value) > 300)
		return util_err(error_r, "a list value has 1 to 300 characters");
	for (const char *p = value; *p; p++)
		if ((unsigned char)*p <= 0x20 || *p == 0x7f)
			return util_err(error_r, "a list value has no spaces or control characters");
	if (strcmp(kind, "sender") == 0 || strcmp(kind, "recipient") == 0) {
		at = strchr(value, '@');
		if (at == NULL || strchr(at + 1, '@') != NULL || at[1] == '\0' || strchr(at + 1, '.') == NULL)
			return util_err(error_r, "a %s entry is ADDRESS or @DOMAIN, not '%.64s'", kind, value);
	} else if (strcmp(kind, "client") == 0) {
		if (filter_ip_match(value, (const struct sockaddr *)&any) < 0)
			return util_err(error_r, "a client entry is an IP address or CIDR, not '%.64s'", value);
	} else if (strcmp(kind, "helo") == 0) {
		if (strchr(value, '@') != NULL)
			return util_err(error_r, "a helo entry is a host name, not '%.64s'", value);
	} else {
		return util_err(error_r, "a list kind is sender, client, helo or recipient, not '%.16s'", kind);
	}
	if (skip[0] != '\0') {
		char buf[256], *save = NULL;
		if (strcmp(list, "allow") != 0)
			return util_err(error_r, "--skip is for allow entries");
		if (util_fmt(buf, sizeof(buf), "%s", skip) < 0)
			return util_err(error_r, "--skip too long");
		for (char *w = strtok_r(buf, ",", &save); w != NULL; w = strtok_r(NULL, ",", &save))
			if (filter_skip_bit(w) == 0)
				return util_err(error_r, "--skip: unknown check '%.32s'", w);
	}
	return 0;
}
