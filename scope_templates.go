package cyberark

import (
	"errors"
	"fmt"
	"slices"
	"strings"

	"github.com/hashicorp/vault/sdk/helper/identitytpl"
	"github.com/hashicorp/vault/sdk/logical"
	"github.com/ryanuber/go-glob"
)

// A role's scopes and allowed_scopes may be templates over the reader's Vault identity,
// so that one role serves every team whose entity says which team it is. Whoever may
// edit an entity's metadata (or name groups, or an auth method's alias metadata) then
// chooses scopes, so a templated role must set scope_ceiling, and every scope a read of
// it asks for or allows must match the ceiling: a value outside it is refused, never
// granted.

// groupNamesDirective expands a scope once per group the reader's entity is in. Vault's
// ACL templating has no such directive (a list has no single value); Vault's JSON
// templating renders it as a JSON list, which is no scope either.
const groupNamesDirective = "identity.entity.groups.names"

// templateSources is how a refusal names what templates may use.
const templateSources = "identity.entity.id, identity.entity.name, identity.entity.metadata.<key>, " +
	"identity.entity.aliases.<mount accessor>.id, .name or .metadata.<key>, and " + groupNamesDirective

// isTemplate says whether a role scope is a template: Vault's identity templates are the
// only use of braces in a scope this engine knows, and a lone "}}" is a broken one.
func isTemplate(s string) bool {
	return strings.Contains(s, "{{") || strings.Contains(s, "}}")
}

// withinCeiling says whether scope matches a pattern of the ceiling. A pattern's * stands
// for any run of characters other than '.', unlike the globs of allowed_roles: a
// metadata value with a dot must not reach a scope with more segments (team.*.read
// admits team.payments.read, never team.payments.admin.read).
func withinCeiling(ceiling []string, scope string) bool {
	return slices.ContainsFunc(ceiling, func(pattern string) bool {
		ps, ss := strings.Split(pattern, "."), strings.Split(scope, ".")
		if len(ps) != len(ss) {
			return false
		}
		for i := range ps {
			if !glob.Glob(ps[i], ss[i]) {
				return false
			}
		}
		return true
	})
}

// templated says whether a token read of the role depends on who reads it.
func (r *roleEntry) templated() bool {
	return r != nil && (slices.ContainsFunc(r.Scopes, isTemplate) || slices.ContainsFunc(r.AllowedScopes, isTemplate))
}

// templatePart is a template's literal text or one directive, trimmed as Vault trims it.
type templatePart struct {
	literal   string
	directive string
}

// parseTemplate splits a scope template into its parts. The SDK decides what is
// balanced, so that a template means here what it means in a Vault policy; this engine
// decides which directives it expands.
func parseTemplate(s string) ([]templatePart, error) {
	if _, _, err := identitytpl.PopulateString(identitytpl.PopulateStringInput{String: s, ValidityCheckOnly: true}); err != nil {
		return nil, fmt.Errorf("template %s: %w", quoteShort(s), err)
	}
	pieces := strings.Split(s, "{{")
	parts := []templatePart{{literal: pieces[0]}}
	groups := 0
	for _, piece := range pieces[1:] {
		d, rest, _ := strings.Cut(piece, "}}")
		d = strings.TrimSpace(d)
		if err := checkDirective(d); err != nil {
			return nil, fmt.Errorf("template %s: %w", quoteShort(s), err)
		}
		if d == groupNamesDirective {
			groups++
		}
		parts = append(parts, templatePart{directive: d}, templatePart{literal: rest})
	}
	if groups > 1 {
		// One scope per pair of groups would grow with the square of the groups.
		return nil, fmt.Errorf("template %s: {{%s}} may appear once in a scope", quoteShort(s), groupNamesDirective)
	}
	return parts, nil
}

// checkDirective accepts the entity's own attributes and its groups' names. Time
// directives would make every read a different token, and identity.groups.* names a
// group in the template itself, which a literal scope says better.
func checkDirective(d string) error {
	if rest, ok := strings.CutPrefix(d, "identity.entity."); ok && entityDirective(rest) {
		return nil
	}
	return fmt.Errorf("%s is not a template this engine expands; use %s", quoteShort("{{"+d+"}}"), templateSources)
}

// entityDirective says whether an identity.entity directive names one value, or the
// group names.
func entityDirective(rest string) bool {
	if alias, ok := strings.CutPrefix(rest, "aliases."); ok {
		accessor, field, _ := strings.Cut(alias, ".")
		return accessor != "" && (field == "id" || field == "name" || strings.HasPrefix(field, "metadata.") && field != "metadata.")
	}
	return rest == "id" || rest == "name" || rest == "groups.names" || strings.HasPrefix(rest, "metadata.") && rest != "metadata."
}

// checkTemplates checks each template in scopes, for the field named.
func checkTemplates(scopes []string) error {
	for _, s := range scopes {
		if !isTemplate(s) {
			continue
		}
		if _, err := parseTemplate(s); err != nil {
			return err
		}
	}
	return nil
}

// ceilingProblems are the role's template and ceiling problems: templates Vault would
// not parse or this engine does not expand, a ceiling that is missing or meaningless,
// and a literal effective scope (the config's included) outside the ceiling, which
// every read would refuse.
func (r *roleEntry) ceilingProblems(cfg *cyberarkConfig) fieldErrors {
	var problems fieldErrors
	problems.check("scopes", checkTemplates(r.Scopes))
	problems.check("allowed_scopes", checkTemplates(r.AllowedScopes))
	if !problems.check("scope_ceiling", checkCeiling(r.ScopeCeiling)) {
		return problems
	}
	if r.templated() && len(r.ScopeCeiling) == 0 {
		problems.add("scope_ceiling", "is required when scopes or allowed_scopes hold templates: list the scopes, or patterns with *, that the templates may expand to, so that whoever edits entity metadata cannot choose any scope")
	}
	rule, _ := effectiveScopes(cfg, r) // its error is validate's to report
	for _, s := range slices.Concat(rule.Scopes, rule.Allowed) {
		if len(r.ScopeCeiling) > 0 && !isTemplate(s) && !withinCeiling(r.ScopeCeiling, s) {
			from := "config"
			if slices.Contains(r.Scopes, s) || slices.Contains(r.AllowedScopes, s) {
				from = "role"
			}
			problems.add("scope_ceiling", "does not admit the effective scope %q (from the %s), so every read would refuse it; widen the ceiling or change the scopes", s, from)
			break
		}
	}
	return problems
}

// checkCeiling accepts scopes and * patterns. A pattern of stars and dots alone names
// no scope: it admits every scope of its shape (* every scope without a dot, "all"
// among them), which would make the ceiling no bound.
func checkCeiling(ceiling []string) error {
	if err := checkScopes(ceiling); err != nil {
		return err
	}
	for _, p := range ceiling {
		switch {
		case isTemplate(p):
			return fmt.Errorf("%s: a ceiling is literal scopes and * patterns, never a template, or whoever edits entity metadata would move it", quoteShort(p))
		case strings.Trim(p, "*.") == "":
			return fmt.Errorf("%q admits any scope of its shape, so it bounds nothing; list the scopes, or patterns such as team.*.read, that the templates may expand to", p)
		}
	}
	return nil
}

// ceilingCovers returns a pattern of the ceiling that matches a protected scope, and
// that scope, compared without case as rotationScopeIn compares.
func ceilingCovers(ceiling, protected []string) (pattern, scope string, ok bool) {
	for _, p := range ceiling {
		for _, s := range protected {
			if withinCeiling([]string{strings.ToLower(p)}, strings.ToLower(s)) {
				return p, s, true
			}
		}
	}
	return "", "", false
}

// ceilingRefusal is the 400's reason for a ceiling that covers a protected scope.
func ceilingRefusal(pattern, scope string) string {
	return fmt.Sprintf("scope_ceiling: %q matches %q, a rotation, management or denied scope (this client's rotation_scopes, management_scopes or denied_scopes, or another client's rotation_scopes or management_scopes at the same application): a template could expand to it, and a token with it may change a password the engine holds; narrow the pattern", pattern, scope)
}

// readerIdentity is what a templated role's scopes expand from.
type readerIdentity struct {
	entityID string          // empty: the token has no entity (a root token, say)
	entity   *logical.Entity // nil: no entity of that ID
	groups   []string        // the entity's group names, when a template asks for them
}

// readerIdentity looks up the reader's entity, and its groups when a template asks for
// them, for a templated role only: other reads cost no call to Vault.
func (b *backend) readerIdentity(req *logical.Request, role *roleEntry) (*readerIdentity, error) {
	if !role.templated() || req.EntityID == "" {
		return &readerIdentity{}, nil
	}
	who := &readerIdentity{entityID: req.EntityID}
	var err error
	if who.entity, err = b.System().EntityInfo(req.EntityID); err != nil {
		return nil, fmt.Errorf("looking up the reader's entity: %w", err)
	}
	if who.entity == nil || !slices.ContainsFunc(slices.Concat(role.Scopes, role.AllowedScopes), func(s string) bool {
		return strings.Contains(s, groupNamesDirective)
	}) {
		return who, nil
	}
	groups, err := b.System().GroupsForEntity(req.EntityID)
	if err != nil {
		return nil, fmt.Errorf("looking up the reader's groups: %w", err)
	}
	for _, g := range groups {
		who.groups = append(who.groups, g.Name)
	}
	return who, nil
}

// errNoEntity says why a token without an entity cannot read a templated role.
var errNoEntity = errors.New("its scopes come from the reader's identity ({{identity...}} templates), and this token has no entity (a root token, or one created without an auth method); read with a token from an auth method whose login is tied to an entity")

// forReader is the scope rule for one reader: templates expanded from the reader's
// identity, and every scope held against the role's ceiling. Only the role's own lists
// are templates; scopes inherited from the config are literal whatever they hold.
func (rule scopeRule) forReader(role *roleEntry, who *readerIdentity) (scopeRule, error) {
	if role == nil || (len(role.ScopeCeiling) == 0 && !rule.Templated) {
		return rule, nil
	}
	scopesFromRole := rule.ScopesFrom == "role"
	allowedFromRole := rule.AllowedFrom == "role" || scopesFromRole
	var err error
	if rule.Scopes, err = expandScopes(rule.Scopes, scopesFromRole, role.ScopeCeiling, who); err != nil {
		return rule, err
	}
	rule.Allowed, err = expandScopes(rule.Allowed, allowedFromRole, role.ScopeCeiling, who)
	return rule, err
}

// expandScopes expands each scope of list (templates only when fromRole) and keeps the
// first of any that expand alike: a group's scope may repeat a literal one.
func expandScopes(list []string, fromRole bool, ceiling []string, who *readerIdentity) ([]string, error) {
	out := make([]string, 0, len(list))
	for _, s := range list {
		values := []string{s}
		if fromRole && isTemplate(s) {
			var err error
			if values, err = expandScope(s, ceiling, who); err != nil {
				return nil, err
			}
		} else if len(ceiling) > 0 && !withinCeiling(ceiling, s) {
			return nil, fmt.Errorf("%q is outside scope_ceiling [%s]", s, strings.Join(ceiling, " "))
		}
		for _, v := range values {
			if !slices.Contains(out, v) {
				out = append(out, v)
			}
		}
	}
	return out, checkScopes(out)
}

// expandScope is one template's scopes for the reader: one, or one per group with the
// groups directive. A single value outside the ceiling or the scope syntax is refused;
// a group whose scope is either is left out, since an entity is in groups for other
// reasons than this role, and the read is refused only when no group is left.
func expandScope(tmpl string, ceiling []string, who *readerIdentity) ([]string, error) {
	parts, err := parseTemplate(tmpl)
	switch {
	case err != nil:
		return nil, err // stored before this engine checked templates
	case who.entityID == "":
		return nil, errNoEntity
	case who.entity == nil:
		return nil, fmt.Errorf("its scopes come from the reader's identity, and the token's entity %q does not exist (deleted?)", who.entityID)
	}
	var prefix, suffix strings.Builder
	grouped := false
	for _, p := range parts {
		value := p.literal
		switch {
		case p.directive == groupNamesDirective:
			grouped = true
			continue
		case p.directive != "":
			if value, err = directiveValue(tmpl, p.directive, who.entity); err != nil {
				return nil, err
			}
		}
		if grouped {
			suffix.WriteString(value)
		} else {
			prefix.WriteString(value)
		}
	}
	if !grouped {
		return []string{prefix.String()}, checkExpanded(tmpl, prefix.String(), ceiling)
	}
	return groupScopes(tmpl, prefix.String(), suffix.String(), ceiling, who.groups)
}

// directiveValue is one directive's value for the entity, through the SDK's ACL
// templating, which takes a value as it is and never expands it again. An empty value
// counts as missing: it would turn team.{{...}}.read into team..read.
func directiveValue(tmpl, directive string, entity *logical.Entity) (string, error) {
	_, value, err := identitytpl.PopulateString(identitytpl.PopulateStringInput{
		String: "{{" + directive + "}}", Entity: entity, Mode: identitytpl.ACLTemplating,
	})
	if err != nil || value == "" {
		return "", fmt.Errorf("template %s needs %s, which the reader's entity does not have (or has empty); set it on the entity, or read with another identity", quoteShort(tmpl), directiveNeeds(directive))
	}
	if !identityValue(value) {
		return "", fmt.Errorf("template %s: %s holds a character a scope value may not (allowed: letters, digits and _ - . @ :); a comma, space, * or brace would let an identity reach scopes its text does not show",
			quoteShort(tmpl), directiveNeeds(directive))
	}
	return value, nil
}

// identityValue says whether a value from the reader's identity may go into a scope:
// nothing that a tenant or this engine could read as a separator, a pattern or a
// template.
func identityValue(v string) bool {
	for _, r := range v {
		switch {
		case r >= 'a' && r <= 'z', r >= 'A' && r <= 'Z', r >= '0' && r <= '9':
		case strings.ContainsRune("_-.@:", r):
		default:
			return false
		}
	}
	return true
}

// directiveNeeds says what a directive reads, for a refusal.
func directiveNeeds(d string) string {
	rest := strings.TrimPrefix(d, "identity.entity.")
	if alias, ok := strings.CutPrefix(rest, "aliases."); ok {
		accessor, field, _ := strings.Cut(alias, ".")
		if key, ok := strings.CutPrefix(field, "metadata."); ok {
			field = fmt.Sprintf("metadata key %q", key)
		}
		return fmt.Sprintf("the %s of its alias on mount accessor %q", field, accessor)
	}
	if key, ok := strings.CutPrefix(rest, "metadata."); ok {
		return fmt.Sprintf("the metadata key %q", key)
	}
	return "its " + rest
}

// checkExpanded holds one expanded scope to the scope syntax and the ceiling.
func checkExpanded(tmpl, scope string, ceiling []string) error {
	if err := checkScopes([]string{scope}); err != nil {
		return fmt.Errorf("template %s expands for this reader to a value that is not a scope: %w", quoteShort(tmpl), err)
	}
	if !withinCeiling(ceiling, scope) {
		return fmt.Errorf("%q, which template %s expands to from the reader's identity, is outside scope_ceiling [%s]: metadata outside the ceiling is refused, so that whoever edits entity metadata cannot widen a grant beyond it",
			scope, quoteShort(tmpl), strings.Join(ceiling, " "))
	}
	return nil
}

// groupScopes is a groups template's scope for each of the reader's groups that gives a
// valid scope within the ceiling.
func groupScopes(tmpl, prefix, suffix string, ceiling, groups []string) ([]string, error) {
	var out []string
	for _, g := range groups {
		if !identityValue(g) {
			continue // left out, as a group outside the ceiling is
		}
		if s := prefix + g + suffix; checkExpanded(tmpl, s, ceiling) == nil {
			out = append(out, s)
		}
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("template %s expands to no scope within scope_ceiling [%s] for the reader's %d group(s): a group's scope outside the ceiling is left out", quoteShort(tmpl), strings.Join(ceiling, " "), len(groups))
	}
	return out, nil
}
