-- The database side of the PostgREST walk-through (examples/postgrest/README.md):
-- a table served by PostgREST, its roles, and a trigger that NOTIFYs the channel
-- `chat` with each inserted or updated row as JSON.
--
--   psql postgres://postgres@127.0.0.1:5432/postgres -f examples/postgrest/schema.sql

create schema api;

create table api.messages (
  id         bigint generated always as identity primary key,
  body       text not null,
  author     text not null default current_setting('request.jwt.claims', true)::json ->> 'name',
  created_at timestamptz not null default now()
);

-- The role PostgREST switches to for tokens with "role": "web_user".
create role web_user nologin;
grant usage on schema api to web_user;
grant select, insert, update on api.messages to web_user;

-- The role PostgREST logs in as. Change the password outside a walk-through.
create role authenticator noinherit login password 'change-me';
grant web_user to authenticator;

-- Outside the exposed schema, so it does not show up as an /rpc endpoint.
create function public.notify_chat() returns trigger
language plpgsql as $$
begin
  perform pg_notify('chat', row_to_json(NEW)::text);
  return NEW;
end
$$;

create trigger messages_notify
  after insert or update on api.messages
  for each row execute function public.notify_chat();
