# Team A's part of the engine mounted at cyberark/: its client (the service user
# clients/team-a, its secret and rotation), its roles, and their tokens. Nothing of
# another team's, and nothing of the mount's config (the default client).
#
#   vault policy write cyberark-team-a examples/policies/team-a.hcl
#
# Give one such policy per team, with the team's name in place of team-a. The engine
# holds the line between teams where a path glob cannot:
# - a role of team A may use only a client whose allowed_roles lists it (team A's own
#   client allows "team-a-*"), so roles/team-a-x with client=team-b is refused (400);
# - the default client (config) serves only the roles in its allowed_roles once it has
#   any, so set them there (empty allows every role, as before clients had names);
# - a client may be managed (rotation_method=managed) only by a manager that lists it in
#   managed_clients, so team A cannot have the manager reset its password, nor put the
#   manager's management_scopes or another client's rotation_scopes in its tokens.
#
# The globs match every name that starts with "team-a": team-a, team-a-app, and also
# team-ab or team-admin. Pick team names that are not the start of another's.

# clients/team-a and clients/team-a/rotate-root.
path "cyberark/clients/team-a*" {
  capabilities = ["create", "read", "update", "delete", "list"]
}

# The team's roles, named team-a-<something>; each names client=team-a.
path "cyberark/roles/team-a*" {
  capabilities = ["create", "read", "update", "delete", "list"]
}

# Tokens of the team's roles.
path "cyberark/token/team-a*" {
  capabilities = ["read"]
}
