-- pgws history store: the messages of history channels, kept in PostgreSQL.
--
-- pgws applies this file itself at start-up when its role may; a DBA may apply
-- it instead, once per database, before pgws starts:
--
--     psql -v ON_ERROR_STOP=1 -f sql/history.sql                  # schema "pgws"
--     PGOPTIONS='-c pgws.history_schema=chat_history' \
--         psql -v ON_ERROR_STOP=1 -f sql/history.sql              # another schema
--
-- A schema name has 1 to 55 bytes (the announcing channel "<schema>.history" must
-- fit PostgreSQL's 63) and no "$".
--
-- It is idempotent and versioned: it creates the schema when missing, records each
-- migration in <schema>.migrations, and applies only the ones not recorded yet. It
-- runs in one transaction under an advisory lock, so any number of pgws instances
-- (or a DBA) may run it at once. A role that finds the store missing or behind and
-- may not create it gets an `insufficient_privilege` error naming what is missing.
--
-- What the store holds (schema "pgws" below):
--
--   pgws.channels   one counter row per history channel: its epoch, its last offset
--                   and the time that offset was taken.
--   pgws.messages   the kept messages: (channel_id, offset) -> created_at, payload.
--
-- Publishing: `select pgws.publish(channel, payload)` returns the message's offset
-- and runs in the caller's transaction (usable from triggers). Committed, the
-- message is kept and announced; rolled back, nothing is kept, nothing is announced
-- and the offset is taken again by the next message.
--
-- Offsets: 1, 2, 3, ... per channel, gapless and in commit order, whichever
-- connection or instance writes. A sequence cannot give that: nextval() is never
-- rolled back (gaps) and hands out numbers in call order, not commit order. So
-- publish() increments the channel's counter row: the row lock is held until the
-- transaction ends, so writers to one channel take turns (each waits for the
-- previous writer to commit or roll back), while writers to different channels
-- never wait for each other. The cost: one channel's publish rate is bounded by
-- its transactions' commit latency, and a long transaction that published to a
-- channel holds up the channel's other writers until it ends. Transactions that
-- publish to several channels should do so in one order (publish_many() sorts by
-- name) or PostgreSQL may end one of them with a deadlock error.
--
-- Epochs: each counter row has an epoch, a random 12-character base64url string.
-- A new counter row (the first message of a channel, or after the row was deleted,
-- or inserted again by a data-only restore) gets a new epoch, so a position from
-- an earlier history is never mistaken for one of the new one. Deleting a counter
-- row deletes the channel's messages (its next message is offset 1 of a new
-- epoch). After restoring the whole schema from a backup (a full dump or a
-- physical/point-in-time restore), give every channel a new epoch:
--
--     update pgws.channels set epoch = default;
--
-- Announcing: publish() runs pg_notify('<schema>.history', '<offset> <epoch> <channel>')
-- ("pgws.history" by default), a reference to the stored message rather than the
-- message itself: pgws listens to that one channel and fetches each payload once.
-- The offset is decimal, the epoch has no space, and the channel is the rest of
-- the text, verbatim. A plain NOTIFY on a history channel is not kept.
--
-- Payloads: any text value (PostgreSQL caps one at 1 GB; the 8000-byte NOTIFY
-- limit does not apply). Channel names: 1 to 63 bytes, as PostgreSQL channels.
--
-- Retention: a message is dropped when it is older than the TTL or beyond the
-- newest max_count of its channel. pgws applies both limits on every read, and
-- deletes with prune(ttl, max_count[, batch]), which deletes at most `batch` rows
-- per call and skips (returns 0) while another session is pruning. A message's
-- age counts from the moment publish() took its offset; within a channel these
-- times never go down, so the kept messages are always the newest offsets.
--
-- Privileges: pgws's role needs, when it does not own the schema:
--
--     grant usage on schema pgws to pgws_role;
--     grant select on pgws.migrations to pgws_role;
--     grant select, insert, update, delete on pgws.channels, pgws.messages to pgws_role;
--
-- and any role that calls pgws.publish() needs select, insert and update on
-- pgws.channels and insert on pgws.messages.

do $pgws$
declare
    s constant text := coalesce(nullif(current_setting('pgws.history_schema', true), ''), 'pgws');
    latest constant integer := 1;
    found_version integer := 0;
    has_schema boolean;
begin
    -- The announcing channel, "<schema>.history", must be a valid channel name,
    -- and the name goes into dollar-quoted function bodies below.
    if octet_length(s) > 55 or strpos(s, '$') > 0 then
        raise exception using errcode = 'invalid_name',
            message = format('pgws history store: schema name %I is not 1 to 55 bytes without $', s);
    end if;

    -- One migration at a time per schema, across every connection and instance.
    perform pg_advisory_xact_lock(hashtext('pgws.history'), hashtext(s));

    has_schema := exists (select from pg_namespace where nspname = s);
    if has_schema and exists (
        select from pg_class c join pg_namespace n on n.oid = c.relnamespace
        where n.nspname = s and c.relname = 'migrations'
    ) then
        if not has_schema_privilege(s, 'USAGE')
            or not has_table_privilege(format('%I.migrations', s), 'SELECT') then
            raise exception using errcode = 'insufficient_privilege',
                message = format('pgws history store: role %I may not read %I.migrations',
                                 current_user, s),
                hint = format('grant usage on schema %I and select on %I.migrations to %I',
                              s, s, current_user);
        end if;
        execute format('select coalesce(max(version), 0) from %I.migrations', s)
            into found_version;
    end if;

    if found_version >= latest then
        return;
    end if;

    -- Something is missing: go on only if this role may create it.
    if not has_schema then
        if not has_database_privilege(current_database(), 'CREATE') then
            raise exception using errcode = 'insufficient_privilege',
                message = format('pgws history store: schema %I is missing and role %I may not create it',
                                 s, current_user),
                hint = 'apply sql/history.sql as a role that may, or grant create on the database';
        end if;
        execute format('create schema %I', s);
    elsif not has_schema_privilege(s, 'CREATE') then
        raise exception using errcode = 'insufficient_privilege',
            message = format('pgws history store: schema %I is at version %s of %s and role %I may not migrate it',
                             s, found_version, latest, current_user),
            hint = 'apply sql/history.sql as a role that may, or grant create on the schema';
    end if;

    execute format($sql$
        create table if not exists %1$I.migrations (
            version integer primary key,
            description text not null,
            applied_at timestamptz not null default now()
        )
    $sql$, s);

    if found_version < 1 then
        -- %1$I is the schema, %2$L the announcing channel, %3$L the schema as text.
        execute format($v1$
            -- 72 random bits (bytes 1-6 and 11-13 of a version 4 UUID) in base64url.
            create function %1$I.new_epoch() returns text
            language sql volatile parallel safe
            as $fn$
                select translate(encode(substr(b, 1, 6) || substr(b, 11, 3), 'base64'), '+/', '-_')
                from uuid_send(gen_random_uuid()) as b
            $fn$;

            create table %1$I.channels (
                id bigint generated always as identity primary key,
                channel text not null unique check (octet_length(channel) between 1 and 63),
                epoch text not null default %1$I.new_epoch(),
                last_offset bigint not null default 0,
                last_at timestamptz not null default clock_timestamp()
            );

            create table %1$I.messages (
                channel_id bigint not null,
                "offset" bigint not null,
                created_at timestamptz not null,
                payload text not null,
                primary key (channel_id, "offset")
            );

            -- Every inserted counter row starts a new history, even one copied
            -- back from a dump.
            create function %1$I.fresh_epoch() returns trigger
            language plpgsql
            as $fn$
            begin
                new.epoch := %1$I.new_epoch();
                return new;
            end
            $fn$;

            create trigger fresh_epoch before insert on %1$I.channels
                for each row execute function %1$I.fresh_epoch();

            -- A deleted counter row takes its messages along. A trigger rather
            -- than a foreign key: nothing to check on every publish.
            create function %1$I.drop_messages() returns trigger
            language plpgsql
            as $fn$
            begin
                if tg_op = 'TRUNCATE' then
                    truncate %1$I.messages;
                else
                    delete from %1$I.messages m using old_rows o where m.channel_id = o.id;
                end if;
                return null;
            end
            $fn$;

            create trigger drop_messages after delete on %1$I.channels
                referencing old table as old_rows
                for each statement execute function %1$I.drop_messages();

            create trigger drop_messages_on_truncate after truncate on %1$I.channels
                for each statement execute function %1$I.drop_messages();

            -- Keeps a message and announces it; returns its offset. The counter
            -- row's lock, held to the end of the transaction, makes offsets
            -- gapless and in commit order.
            create function %1$I.publish(channel text, payload text) returns bigint
            language plpgsql volatile
            as $fn$
            #variable_conflict use_column
            declare
                ch_id bigint;
                o bigint;
                e text;
                at timestamptz;
            begin
                update %1$I.channels c
                   set last_offset = c.last_offset + 1,
                       last_at = greatest(c.last_at, clock_timestamp())
                 where c.channel = publish.channel
                returning c.id, c.last_offset, c.epoch, c.last_at into ch_id, o, e, at;
                if not found then
                    insert into %1$I.channels as c (channel, last_offset) values (publish.channel, 1)
                    on conflict (channel) do update
                       set last_offset = c.last_offset + 1,
                           last_at = greatest(c.last_at, clock_timestamp())
                    returning c.id, c.last_offset, c.epoch, c.last_at into ch_id, o, e, at;
                end if;
                insert into %1$I.messages (channel_id, "offset", created_at, payload)
                values (ch_id, o, at, publish.payload);
                perform pg_notify(%2$L, o || ' ' || e || ' ' || publish.channel);
                return o;
            end
            $fn$;

            -- publish() for several messages, all or nothing, taking the counter
            -- rows in name order so that concurrent callers cannot deadlock.
            -- Returns each message's ordinality (its place in the arrays), epoch
            -- and offset.
            create function %1$I.publish_many(channels text[], payloads text[])
            returns table (ordinality bigint, epoch text, "offset" bigint)
            language plpgsql volatile
            as $fn$
            #variable_conflict use_column
            declare
                r record;
            begin
                if cardinality(channels) is distinct from cardinality(payloads) then
                    raise exception using errcode = 'invalid_parameter_value',
                        message = 'pgws history store: publish_many needs one payload per channel';
                end if;
                for r in
                    select t.c, t.p, t.i
                    from unnest(channels, payloads) with ordinality as t(c, p, i)
                    order by t.c collate "C", t.i
                loop
                    ordinality := r.i;
                    "offset" := %1$I.publish(r.c, r.p);
                    select c.epoch into epoch from %1$I.channels c where c.channel = r.c;
                    return next;
                end loop;
            end
            $fn$;

            -- Deletes the messages older than ttl or beyond the newest max_count
            -- of their channel, at most `batch` of them; returns how many. Skips
            -- (returns 0) while another session prunes this store.
            create function %1$I.prune(ttl interval, max_count bigint, batch integer default 10000)
            returns bigint
            language plpgsql volatile
            as $fn$
            declare
                cutoff constant timestamptz := now() - ttl;
                budget bigint := greatest(batch, 1);
                ch record;
                oldest bigint;
                oldest_at timestamptz;
                kept_from bigint;
                upto bigint;
                n bigint;
                total bigint := 0;
            begin
                if not pg_try_advisory_xact_lock(hashtext('pgws.history.prune'), hashtext(%3$L)) then
                    return 0;
                end if;
                for ch in select c.id, c.last_offset from %1$I.channels c order by c.id loop
                    select m."offset", m.created_at into oldest, oldest_at
                      from %1$I.messages m where m.channel_id = ch.id
                     order by m."offset" limit 1;
                    continue when not found;
                    continue when oldest > ch.last_offset - max_count and oldest_at > cutoff;
                    -- Ages never go down along offsets: the first young message
                    -- starts what is kept.
                    select m."offset" into kept_from
                      from %1$I.messages m where m.channel_id = ch.id and m.created_at > cutoff
                     order by m."offset" limit 1;
                    kept_from := greatest(coalesce(kept_from, ch.last_offset + 1),
                                          ch.last_offset - max_count + 1);
                    upto := least(kept_from - 1, oldest + budget - 1);
                    continue when upto < oldest;
                    delete from %1$I.messages m
                     where m.channel_id = ch.id and m."offset" between oldest and upto;
                    get diagnostics n = row_count;
                    total := total + n;
                    budget := budget - (upto - oldest + 1);
                    exit when budget <= 0;
                end loop;
                return total;
            end
            $fn$;
        $v1$, s, s || '.history', s);
        execute format('insert into %I.migrations (version, description) values (1, %L)',
                       s, 'channels, messages, publish, publish_many, prune');
    end if;
end
$pgws$;
